//! The server's state behind one interface: typed methods, no SQL or database type outside
//! this module. [`Backend`] is what a database implements (SQLite embedded by default; a
//! PostgreSQL backend implements the same trait and runs the same [`suite`] of tests).
//!
//! Rules every backend keeps:
//! - each method is one transaction; a change and its audit [`Entry`] commit together;
//! - every state change is a compare-and-set: it applies only if the state is still the one it
//!   was decided on (`session_transition`, `claim_login_attempt`, `use_totp_step`, `enrol`);
//! - an acknowledged write is durable (SQLite: WAL with `synchronous = FULL`).
//!
//! [`Store`] runs the blocking backend calls off the async workers (`spawn_blocking`).

use std::{path::Path, sync::Arc};

use fernwart_api::AuditRecord;
use fernwart_proto::chain;

use crate::{
    audit::Entry,
    authz::{PrepareFacts, Refusal, Release, SigningFacts},
    domain::{
        session::{Session, SignedApproval},
        window::{Days, Window},
        Caller, Role, SessionState, UnixSecs,
    },
};

mod migrations;
mod queue;
mod sqlite;
#[cfg(test)]
pub mod suite;

pub use queue::AuditQueue;
pub use sqlite::{Sqlite, DB_FILE};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Sql(#[from] rusqlite::Error),
    #[error("database is at schema version {found}, newer than this build ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("cannot set up the database file {path}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Something of that name exists already.
    #[error("{0}")]
    Conflict(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit what is stored (e.g. a target the machine does not offer).
    #[error("{0}")]
    Invalid(String),
    /// The rules of organizations and contracts do not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// The authorization rules refused it (decided inside the transaction).
    #[error("{0}")]
    Refused(crate::authz::Refusal),
    #[error("the database worker stopped")]
    Worker,
}

/// The most technicians' end-to-end keys a session's grant names (the latest).
pub const MAX_TECH_KEYS: usize = 16;

/// What [`Backend::session_tech_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TechKey {
    /// The session named the key already.
    Named,
    /// The key was added.
    Added,
    /// The session's signed approval does not cover the key: not added.
    SignedWithout,
}

/// What [`Backend::agent_e2e_key`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum E2eKeySeen {
    /// The machine had no key: this one is recorded now.
    Recorded,
    /// The key recorded before.
    Same,
    /// Another key than the one recorded (which is given).
    Different(String),
}

/// What a login needs to know about the user it names.
#[derive(Debug, Clone)]
pub struct LoginSubject {
    pub id: i64,
    /// The stored spelling of the name.
    pub name: String,
    pub role: Role,
    pub password_hash: String,
    pub totp_secret: Option<String>,
    pub totp_confirmed: bool,
    pub disabled: bool,
    pub expires_at: Option<UnixSecs>,
}

/// A user's WebAuthn security key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: i64,
    pub user_id: i64,
    /// The name its owner gave it.
    pub name: String,
    /// The authenticator's credential id, base64url without padding.
    pub credential_id: String,
    /// Its public key as an approver key: `es256:RP:POINT`.
    pub public_key: String,
    pub sign_count: u32,
    pub created_at: UnixSecs,
    pub last_used: Option<UnixSecs>,
}

/// What a WebAuthn challenge was handed out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengePurpose {
    /// Registering a key (bound to the user).
    Register,
    /// A console login's second factor (bound to no user: asked before the password).
    Login,
}

impl ChallengePurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Login => "login",
        }
    }
}

/// The most security keys of one user.
pub const MAX_CREDENTIALS: i64 = 16;
/// The most challenges pending at once for one purpose (a flood of login pages cannot fill
/// the database).
pub const MAX_CHALLENGES: i64 = 10_000;

/// A user as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub org: Option<String>,
    pub disabled: bool,
    pub mfa: bool,
    pub expires_at: Option<UnixSecs>,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
    pub org: Option<String>,
    pub password_hash: String,
    pub expires_at: Option<UnixSecs>,
}

/// An organization as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRecord {
    pub name: String,
    pub kind: fernwart_api::OrgKind,
    /// Its contracts' other sides: a provider's operators, an operator's providers.
    pub contracts: Vec<String>,
    pub allow_no_approval: bool,
    pub max_session_secs: Option<i64>,
    pub require_signed: bool,
}

/// An API token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRecord {
    pub id: i64,
    pub role: Role,
    pub org: Option<String>,
    pub created_by: String,
    pub created_at: UnixSecs,
    pub expires_at: UnixSecs,
    pub revoked: bool,
}

/// The name an API token acts under (audit trail, `created_by`).
pub fn token_name(id: i64) -> String {
    format!("token-{id}")
}

/// A machine as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRecord {
    pub id: i64,
    pub name: String,
    pub org: Option<String>,
    /// The targets its agent announced last, as JSON (`[{"name", "address", "protocol"}]`).
    pub targets: Vec<fernwart_api::TargetInfo>,
    pub enrolled_at: Option<UnixSecs>,
    pub revoked: bool,
    pub last_seen: Option<UnixSecs>,
    /// Its agent's trust level as it last reported it (none: never, or an agent before
    /// operator-signed approvals).
    pub trust: Option<String>,
    /// The approver keys its agent pins.
    pub approvers: Vec<String>,
    /// Its operator requires signed approvals.
    pub operator_requires_signed: bool,
}

/// What an agent reported of its operator's trust anchor (`agent.toml` `[trust]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentTrust {
    /// `operator-signed` or `server` (none: unknown).
    pub level: Option<String>,
    pub approvers: Vec<String>,
}

/// An enrolment token, looked up by its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolToken {
    pub machine_id: i64,
    pub machine: String,
    pub expires_at: UnixSecs,
    pub used: bool,
    pub machine_revoked: bool,
}

/// A machine's new certificate, recorded when its enrolment token is claimed, with the
/// end-to-end key its agent sent in the same request (none: an agent before end-to-end
/// encryption, whose first link then names it).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub fingerprint: String,
    pub not_after: UnixSecs,
    pub e2e_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub name: String,
    pub machine: String,
    pub targets: Vec<String>,
    pub users: Vec<String>,
    pub reason: String,
    pub approval_required: bool,
    pub from: UnixSecs,
    pub until: UnixSecs,
    pub created_by: String,
    pub created_at: UnixSecs,
    /// The agent records the session's tunnel connections.
    pub record: bool,
}

/// What `audit list` asks for; every `None` matches all.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only records after this place (pagination).
    pub after: i64,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub actor: Option<String>,
    /// Records of this organization's users or about its machines.
    pub org: Option<String>,
    pub machine: Option<String>,
    pub session: Option<String>,
    /// An action (`session.approve`) or its family (`session`).
    pub kind: Option<String>,
    /// What the caller may see at all: only its own records ...
    pub only_actor: Option<String>,
    /// ... or only its organization's.
    pub only_org: Option<String>,
    pub limit: i64,
}

/// One of a machine's own records, as the server collected it over the agent's link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub record: chain::Linked,
    pub received_at: UnixSecs,
}

/// What became of a batch of a machine's own records ([`Backend::agent_audit_append`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentBatch {
    /// Stored (records held already skipped): the server now holds up to `last`.
    Stored {
        last: u64,
        added: u64,
        /// The first batch held of the machine, starting after record 1: where.
        starts_at: Option<u64>,
        /// The oldest records deleted over the cap: (how many, the first kept).
        pruned: Option<(u64, u64)>,
    },
    /// Nothing of it stored: the server still holds up to `last` (0: none).
    Refused { last: u64, refusal: crate::audit::agent::Refusal },
}

/// A signed checkpoint of the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub time_ms: i64,
    /// The server's Ed25519 signature over `chain::checkpoint_message(seq, hash)`, hex.
    pub signature: String,
}

/// The authorization rule that decides, inside the transaction, whether a session may be
/// prepared and who releases it.
pub type PrepareRule<'a> = dyn Fn(&PrepareFacts) -> Result<Release, Refusal> + 'a;

#[derive(Debug, Clone)]
pub struct MachineOwner {
    pub id: i64,
    pub org: Option<String>,
    /// The providers under contract with `org`.
    pub providers: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct NewWindow {
    pub machine_id: i64,
    pub provider: String,
    pub days: Days,
    pub start: u16,
    pub end: u16,
    pub zone: String,
    pub created_by: String,
    pub created_at: UnixSecs,
}

/// A session state change the store applied: what it was and what it is now.
#[derive(Debug, Clone)]
pub struct Applied {
    pub before: Session,
    pub after: Session,
}

/// A login attempt's place in the user's count of failures in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The attempt may be checked; it is failure number `n` in a row should it fail (and
    /// when `n` is the threshold, the account is locked unless it succeeds).
    Counted(i64),
    /// The account is locked (or would lock with this attempt in flight): nothing is checked.
    Locked,
}

/// A database: typed, blocking methods, each one transaction.
/// One setting to write: its name, the value stored before (compare-and-set), the new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingWrite {
    pub key: String,
    pub expected: Option<String>,
    pub value: String,
}

pub trait Backend: Send + Sync + 'static {
    // ------------------------------------------------------------ audit
    /// Appends records on their own (events of links and tunnels, refusals).
    fn record(&self, entries: &[Entry]) -> Result<(), StoreError>;
    /// Records matching every filter given, in chain order, at most `limit`.
    fn audit_list(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError>;
    /// The chain's records after place `after`, at most `limit`, as stored (for verification,
    /// export and delivery).
    fn audit_chain(&self, after: u64, limit: usize) -> Result<Vec<chain::Linked>, StoreError>;
    fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;
    /// Signs the chain's current end with `sign` if no checkpoint covers it yet; returns the
    /// place it signed.
    fn audit_checkpoint(
        &self,
        sign: &dyn Fn(&[u8]) -> String,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError>;
    /// The sessions released now (approved or active): (session, machine).
    fn released_sessions(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Each enrolled machine not revoked, with the end of its certificate.
    fn machine_cert_ends(&self) -> Result<Vec<(String, UnixSecs)>, StoreError>;
    /// The last place a delivery sink (syslog, file) has delivered; 0 for none.
    fn delivery_cursor(&self, sink: &str) -> Result<u64, StoreError>;
    /// Moves a sink's cursor forward to `seq` (never back).
    fn delivery_advance(&self, sink: &str, seq: u64) -> Result<(), StoreError>;

    // ------------------------------------------------------------ agents' own records
    /// The last of the machine's own records the server holds (0: none).
    fn agent_audit_last(&self, machine: i64) -> Result<u64, StoreError>;
    /// Checks a batch of the machine's own records against what is held
    /// ([`crate::audit::agent::check`]) and stores it, or refuses it, together with the records
    /// `entries` makes of the outcome, in one transaction. Beyond `keep` records of the machine
    /// the oldest are deleted, a tenth of `keep` at a time.
    fn agent_audit_append(
        &self,
        machine: i64,
        records: &[chain::Linked],
        received_at: UnixSecs,
        keep: u64,
        entries: &dyn Fn(&AgentBatch) -> Vec<Entry>,
    ) -> Result<AgentBatch, StoreError>;
    /// The machine's own records after place `after`, at most `limit`, in chain order.
    fn agent_audit(
        &self,
        machine: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError>;

    // ------------------------------------------------------------ logins
    /// The user a login names, matched without regard to case.
    fn login_subject(&self, name: &str) -> Result<Option<LoginSubject>, StoreError>;
    /// Counts an attempt before its password is checked, atomically. The attempt that reaches
    /// `threshold` failures in a row locks the account until `lock_until` at once (a success
    /// of that very attempt unlocks it), so no number of parallel attempts gets more than
    /// `threshold` checked, and an attempt whose request is dropped midway cannot leave the
    /// account locked for good. After a lock has passed, the count starts again.
    fn claim_login_attempt(
        &self,
        user: i64,
        now: UnixSecs,
        threshold: i64,
        lock_until: UnixSecs,
    ) -> Result<Attempt, StoreError>;
    /// The user proved their password (outside a login): the count of failures starts again.
    fn clear_failures(&self, user: i64) -> Result<(), StoreError>;
    /// A counted attempt failed: its records (the failure, and the lock if it was the one
    /// that locked).
    fn login_failed(&self, entries: &[Entry]) -> Result<(), StoreError>;
    /// Marks a TOTP step used, once: false when it was used before.
    fn use_totp_step(&self, user: i64, step: u64) -> Result<bool, StoreError>;

    // ------------------------------------------------------------ WebAuthn
    /// Stores a challenge until `expires` (expired ones are dropped); false when
    /// [`MAX_CHALLENGES`] are pending for its purpose.
    fn webauthn_challenge_new(
        &self,
        challenge: &str,
        purpose: ChallengePurpose,
        user: Option<i64>,
        now: UnixSecs,
        expires: UnixSecs,
    ) -> Result<bool, StoreError>;
    /// Takes a challenge, once: true only if it was pending for this purpose and user and has
    /// not expired; it is gone afterwards either way.
    fn webauthn_challenge_take(
        &self,
        challenge: &str,
        purpose: ChallengePurpose,
        user: Option<i64>,
        now: UnixSecs,
    ) -> Result<bool, StoreError>;
    /// Adds a user's key with its audit entry; false when the credential id is registered
    /// already or the user has [`MAX_CREDENTIALS`].
    #[allow(clippy::too_many_arguments)]
    fn webauthn_add(
        &self,
        user: i64,
        name: &str,
        credential_id: &str,
        public_key: &str,
        sign_count: u32,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<bool, StoreError>;
    /// A user's keys, oldest first.
    fn webauthn_list(&self, user: i64) -> Result<Vec<Credential>, StoreError>;
    /// The key with this credential id.
    fn webauthn_credential(&self, credential_id: &str) -> Result<Option<Credential>, StoreError>;
    /// Removes a user's key (`id`) with its audit entry; false when it is not theirs or gone.
    fn webauthn_remove(&self, user: i64, id: i64, entry: &Entry) -> Result<bool, StoreError>;
    /// Moves a key's signature counter from `old` to `new`, compare-and-set: false when it is
    /// no longer `old` (an assertion raced or was replayed).
    fn webauthn_counter(
        &self,
        id: i64,
        old: u32,
        new: u32,
        now: UnixSecs,
    ) -> Result<bool, StoreError>;
    /// A login succeeded: its failure count resets and its token is stored (by hash).
    #[allow(clippy::too_many_arguments)]
    fn login_succeeded(
        &self,
        user: i64,
        token_hash: &str,
        scope: fernwart_api::Scope,
        now: UnixSecs,
        until: UnixSecs,
        entry: &Entry,
    ) -> Result<(), StoreError>;
    /// A login was used now (idle logins end).
    fn login_used(&self, token_hash: &str, now: UnixSecs) -> Result<(), StoreError>;
    /// Ends one login (`fernwart logout`); false when it was not there.
    fn logout(&self, token_hash: &str, entry: &Entry) -> Result<bool, StoreError>;
    /// The user's current password hash, then up to `earlier` earlier ones, newest first.
    fn password_hashes(&self, user: i64, earlier: usize) -> Result<Vec<String>, StoreError>;
    /// Replaces the password, only if it is still `old_hash` (compare-and-set); keeps the old
    /// one in the history, resets the failure count and ends every other login of the user
    /// than `keep_token`. False when the password changed meanwhile.
    #[allow(clippy::too_many_arguments)]
    fn password_change(
        &self,
        user: i64,
        old_hash: &str,
        new_hash: &str,
        keep_token: &str,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<bool, StoreError>;
    /// Stores a new API token (by hash); returns its id.
    #[allow(clippy::too_many_arguments)]
    fn api_token_create(
        &self,
        token_hash: &str,
        role: Role,
        org: Option<&str>,
        created_by: &str,
        now: UnixSecs,
        expires_at: UnixSecs,
        entry: &dyn Fn(i64) -> Entry,
    ) -> Result<i64, StoreError>;
    fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError>;
    /// Revokes an API token, once; NotFound when there is none of that id.
    fn api_token_revoke(&self, id: i64, now: UnixSecs, entry: &Entry) -> Result<bool, StoreError>;
    /// The caller a login token or an API token belongs to (whatever its state: the rules
    /// decide).
    fn caller(&self, token_hash: &str) -> Result<Option<Caller>, StoreError>;

    // ------------------------------------------------------------ second factor
    /// The pending TOTP secret and whether it is confirmed.
    fn mfa_state(&self, user: i64) -> Result<(Option<String>, bool), StoreError>;
    /// Stores a new pending secret unless one is confirmed already (false then).
    fn mfa_begin(&self, user: i64, secret: &str, entry: &Entry) -> Result<bool, StoreError>;
    /// Confirms `secret` (only if it is still the pending one), marks `step` used and ends
    /// the user's set-up logins. False when it was confirmed or replaced meanwhile.
    fn mfa_confirm(
        &self,
        user: i64,
        secret: &str,
        step: u64,
        entry: &Entry,
    ) -> Result<bool, StoreError>;

    // ------------------------------------------------------------ users
    /// Adds a user; names differing only in case are the same name (Conflict).
    fn user_add(&self, user: &NewUser, now: UnixSecs, entry: &Entry) -> Result<i64, StoreError>;
    fn users(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// Disables a user, ends every login of theirs and revokes the API tokens they created;
    /// returns the user's id.
    fn user_disable(&self, name: &str, entry: &Entry) -> Result<i64, StoreError>;

    // ------------------------------------------------------------ organizations
    #[allow(clippy::too_many_arguments)]
    fn org_add(
        &self,
        name: &str,
        kind: fernwart_api::OrgKind,
        allow_no_approval: bool,
        max_session_secs: Option<i64>,
        require_signed: bool,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<(), StoreError>;
    fn orgs(&self) -> Result<Vec<OrgRecord>, StoreError>;
    /// Changes an organization's rules in one transaction: read, [`OrgChange::apply`] (its
    /// refusal is Invalid), write, and the record `entry` makes of the rules it now has.
    ///
    /// [`OrgChange::apply`]: crate::domain::org::OrgChange::apply
    fn org_set(
        &self,
        name: &str,
        change: crate::domain::org::OrgChange,
        entry: &dyn Fn(crate::domain::org::OrgPolicy) -> Entry,
    ) -> Result<crate::domain::org::OrgPolicy, StoreError>;
    /// `provider` may service `operator`'s machines (kinds checked: Invalid otherwise).
    fn contract_add(
        &self,
        provider: &str,
        operator: &str,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<(), StoreError>;

    // ------------------------------------------------------------ settings
    /// The settings changed at run time: (name, value), by name.
    fn settings(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Writes changed settings in one transaction, each by compare-and-set against the value
    /// stored when the change was computed (`expected`; `None`: none was stored), with the
    /// record `entry`. False (nothing written) if any of them changed meanwhile.
    fn settings_set(
        &self,
        writes: &[SettingWrite],
        by: &str,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<bool, StoreError>;

    // ------------------------------------------------------------ maintenance windows
    /// A machine's id and organization, and the providers under contract with that
    /// organization.
    fn machine_owner(&self, name: &str) -> Result<Option<MachineOwner>, StoreError>;
    /// Adds a recurring window (the provider must be a provider organization: Invalid).
    fn window_add(&self, w: &NewWindow, entry: &dyn Fn(i64) -> Entry)
        -> Result<Window, StoreError>;
    /// Windows, of machines the organization may see (none: all), by machine and id.
    fn windows(&self, org: Option<&str>) -> Result<Vec<Window>, StoreError>;
    /// A window and the organization of its machine.
    fn window_by_id(&self, id: i64) -> Result<Option<(Window, Option<String>)>, StoreError>;
    /// Removes a window; false if it was gone already.
    fn window_remove(&self, id: i64, entry: &Entry) -> Result<bool, StoreError>;

    // ------------------------------------------------------------ machines
    fn machine_add(
        &self,
        name: &str,
        org: Option<&str>,
        token_hash: &str,
        now: UnixSecs,
        token_expires: UnixSecs,
        entry: &Entry,
    ) -> Result<i64, StoreError>;
    /// All machines; with `org`, those the organization may see (as for sessions).
    fn machines(&self, org: Option<&str>) -> Result<Vec<MachineRecord>, StoreError>;
    /// Revokes a machine for good: its unused enrolment tokens die, its open sessions become
    /// `revoked`. Returns its id and the sessions it revoked.
    fn machine_revoke(
        &self,
        name: &str,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<(i64, Vec<Applied>), StoreError>;
    fn enrol_token(&self, token_hash: &str) -> Result<Option<EnrolToken>, StoreError>;
    /// Claims an unused token of a machine that is not revoked and records its certificate,
    /// together, once. False when the token was used or the machine revoked meanwhile.
    fn enrol(
        &self,
        token_hash: &str,
        cert: &IssuedCert,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<bool, StoreError>;
    /// The machine that holds a certificate: (id, name, revoked, organization).
    #[allow(clippy::type_complexity)]
    fn machine_by_cert(
        &self,
        fingerprint: &str,
    ) -> Result<Option<(i64, String, bool, Option<String>)>, StoreError>;
    /// An agent came online: its targets, switch and trust anchor are recorded; returns the
    /// sessions its agent should hold grants for.
    #[allow(clippy::too_many_arguments)]
    fn agent_online(
        &self,
        machine: i64,
        targets: &[fernwart_api::TargetInfo],
        switch_on: bool,
        trust: &AgentTrust,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<Vec<Session>, StoreError>;
    /// Whose signature the approvals of sessions on the machine need.
    fn signing_facts(&self, machine: i64) -> Result<SigningFacts, StoreError>;
    fn agent_switch(&self, machine: i64, on: bool, entry: &Entry) -> Result<(), StoreError>;
    /// The agent's operator changed its trust anchor while it runs (agent link version 3):
    /// recorded with `entry` when it differs from the one held; false when it does not.
    fn agent_trust(
        &self,
        machine: i64,
        trust: &AgentTrust,
        entry: &Entry,
    ) -> Result<bool, StoreError>;
    fn agent_offline(&self, machine: i64, now: UnixSecs, entry: &Entry) -> Result<(), StoreError>;
    /// The end-to-end key an agent said in its hello: recorded the first time (an agent
    /// from before end-to-end encryption has none until then), compared afterwards. A
    /// different key is refused and not recorded.
    fn agent_e2e_key(&self, machine: i64, key: &str) -> Result<E2eKeySeen, StoreError>;
    /// A technician connected to the session with this end-to-end key: it is added to the
    /// session's keys (the latest [`MAX_TECH_KEYS`]), unless the session's approval was signed
    /// without it (the signature covers the keys).
    fn session_tech_key(&self, session: i64, key: &str) -> Result<TechKey, StoreError>;
    /// The machine's recorded end-to-end key.
    fn machine_e2e_key(&self, machine: i64) -> Result<Option<String>, StoreError>;
    /// Every machine's recorded end-to-end key, by machine id.
    fn machine_e2e_keys(&self) -> Result<Vec<(i64, String)>, StoreError>;

    // ------------------------------------------------------------ sessions
    /// Prepares a session in one transaction: gathers the facts of organizations, contracts
    /// and maintenance windows, asks `rule` (the authorization module's `prepare`) and writes
    /// what it decided: a session waiting for its release, or one released already by a
    /// window (with its own record).
    fn session_create(
        &self,
        s: &NewSession,
        rule: &PrepareRule<'_>,
        entry: &Entry,
    ) -> Result<Session, StoreError>;
    fn session_by_name(&self, name: &str) -> Result<Option<Session>, StoreError>;
    fn session_by_id(&self, id: i64) -> Result<Option<Session>, StoreError>;
    /// All sessions, or those of one user; with `org`, only those on machines the
    /// organization may see (its own, or its contracted operators').
    fn sessions(
        &self,
        only_user: Option<i64>,
        org: Option<&str>,
    ) -> Result<Vec<Session>, StoreError>;
    /// Sessions not over whose window closed before `now`.
    fn sessions_overdue(&self, now: UnixSecs) -> Result<Vec<Session>, StoreError>;
    /// Moves a session from `from` to `to` only if it is still in `from` (compare-and-set),
    /// with its record. None when the state changed meanwhile.
    fn session_transition(
        &self,
        id: i64,
        from: SessionState,
        to: SessionState,
        by: &str,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<Option<Applied>, StoreError>;
    /// Approves a session ([`Backend::session_transition`] to `approved`) and stores the
    /// approver's signature it comes with, together.
    #[allow(clippy::too_many_arguments)]
    fn session_approve(
        &self,
        id: i64,
        from: SessionState,
        approval: Option<&SignedApproval>,
        by: &str,
        now: UnixSecs,
        entry: &Entry,
    ) -> Result<Option<Applied>, StoreError>;
    /// What a tunnel open checks, read together: the session and the caller of a token.
    fn tunnel_check(&self, session: i64, token_hash: &str) -> Result<TunnelCheck, StoreError>;
    /// [`Backend::tunnel_check`] if it can be answered at once, without waiting for a lock
    /// or a busy database; `None` where it cannot (then [`Backend::tunnel_check`] on a
    /// blocking thread answers). The default never can.
    fn tunnel_check_now(&self, _session: i64, _token_hash: &str) -> Option<TunnelCheck> {
        None
    }
}

/// What [`Backend::tunnel_check`] reads.
pub type TunnelCheck = (Option<Session>, Option<Caller>);

/// The store as the async server uses it: cheap to clone, blocking work off the workers.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    /// The embedded SQLite database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self::new(Sqlite::open(dir)?))
    }

    pub fn new(backend: impl Backend) -> Self {
        Self { backend: Arc::new(backend) }
    }

    /// Runs `f` on a blocking thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> Result<T, StoreError> + Send + 'static,
    {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || f(backend.as_ref()))
            .await
            .map_err(|_| StoreError::Worker)?
    }

    /// What a tunnel open checks ([`Backend::tunnel_check`]). Read on this thread where the
    /// backend can answer at once (two rows by key from a free read connection, tens of
    /// microseconds), which spares every tunnel open a hand-off to a blocking thread and back
    /// (thread wake-ups: three futex calls per open, docs/bench.md). Otherwise, or if that
    /// read fails, on a blocking thread.
    pub async fn tunnel_check(
        &self,
        session: i64,
        token_hash: String,
    ) -> Result<TunnelCheck, StoreError> {
        if let Some(found) = self.backend.tunnel_check_now(session, &token_hash) {
            return Ok(found);
        }
        self.run(move |b| b.tunnel_check(session, &token_hash)).await
    }

    /// The backend, for callers that are blocking anyway (init, offline commands, tests).
    pub fn blocking(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
}
