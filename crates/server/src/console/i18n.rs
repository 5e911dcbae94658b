//! The console's message catalogue: every string a user reads, in English and German. Pages
//! name a [`Msg`]; none holds text of its own. The language comes from `?lang=`, then the
//! language cookie, then the browser's `Accept-Language`.

/// A language the console speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    En,
    De,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::De];

    /// The language tag (`<html lang>`, `?lang=`, the cookie).
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::De => "de",
        }
    }

    /// A tag as in `?lang=` or the cookie: `en`, `de` (any case, with or without region).
    pub fn parse(tag: &str) -> Option<Lang> {
        let primary = tag.trim().split(['-', '_']).next()?;
        if primary.eq_ignore_ascii_case("en") {
            Some(Lang::En)
        } else if primary.eq_ignore_ascii_case("de") {
            Some(Lang::De)
        } else {
            None
        }
    }

    /// The best of our languages for an `Accept-Language` header (RFC 9110 §12.5.4): the
    /// highest weight wins, the earlier on a tie; none that we speak: English.
    pub fn from_accept_language(header: &str) -> Lang {
        let mut best: Option<(u16, Lang)> = None;
        for item in header.split(',').take(32) {
            let mut parts = item.split(';');
            let Some(lang) = parts.next().and_then(Lang::parse) else { continue };
            let weight = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(Some(1000), parse_weight)
                .unwrap_or(0);
            if weight > 0 && best.is_none_or(|(w, _)| weight > w) {
                best = Some((weight, lang));
            }
        }
        best.map_or(Lang::En, |(_, l)| l)
    }

    /// What the language switch shows for this language (in the language itself).
    pub fn own_name(self) -> &'static str {
        match self {
            Lang::En => Msg::LangEn.text(Lang::En),
            Lang::De => Msg::LangDe.text(Lang::De),
        }
    }
}

/// A `q` value as thousandths: `1`, `0.8`, `0.125`; malformed: none.
fn parse_weight(q: &str) -> Option<u16> {
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_val = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_val),
        "1" if frac_val == 0 => Some(1000),
        _ => None,
    }
}

macro_rules! messages {
    ($($key:ident => $en:literal, $de:literal;)*) => {
        /// One user-visible string of the console.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Msg { $($key,)* }

        impl Msg {
            pub const ALL: &'static [Msg] = &[$(Msg::$key,)*];

            pub fn text(self, lang: Lang) -> &'static str {
                match (self, lang) {
                    $((Msg::$key, Lang::En) => $en, (Msg::$key, Lang::De) => $de,)*
                }
            }
        }
    };
}

messages! {
    Product => "fernwart remote maintenance", "fernwart Fernwartung";
    SkipToContent => "Skip to content", "Zum Inhalt springen";
    MainNav => "Main navigation", "Hauptnavigation";
    NavDashboard => "Overview", "Übersicht";
    NavSessions => "Sessions", "Sitzungen";
    NavMachines => "Machines", "Maschinen";
    NavUsers => "Users", "Benutzer";
    NavOrgs => "Organizations", "Organisationen";
    NavAudit => "Audit trail", "Protokoll";
    NavSettings => "Settings", "Einstellungen";
    SignedInAs => "Signed in as", "Angemeldet als";
    RoleLabel => "role", "Rolle";
    RoleAdmin => "admin", "Administration";
    RoleSessionAdmin => "session admin", "Sitzungsverwaltung";
    RoleTechnician => "technician", "Techniker";
    RoleApprover => "approver", "Freigabe";
    RoleAuditor => "auditor", "Revision";
    Logout => "Log out", "Abmelden";
    LanguageLabel => "Language", "Sprache";
    LangEn => "English", "Englisch";
    LangDe => "German", "Deutsch";

    LoginTitle => "Log in", "Anmelden";
    LoginUser => "User name", "Benutzername";
    LoginPassword => "Password", "Passwort";
    LoginCode => "Code from your authenticator app (6 digits)", "Code aus Ihrer Authenticator-App (6 Ziffern)";
    LoginButton => "Log in", "Anmelden";
    LoginInvalid => "Invalid user name, password or code.", "Benutzername, Passwort oder Code ungültig.";
    LoginTooFast => "Too many attempts: wait a moment, then try again.", "Zu viele Versuche: Bitte kurz warten und erneut versuchen.";
    LoginMfaSetUp => "Second factor set up. Log in again, with a code from your authenticator app.", "Zweiter Faktor eingerichtet. Melden Sie sich erneut an, mit einem Code aus Ihrer Authenticator-App.";
    LoginEnded => "Your login has ended (expired, or unused for too long). Please log in again.", "Ihre Anmeldung ist abgelaufen (Zeit überschritten oder zu lange unbenutzt). Bitte melden Sie sich erneut an.";
    LoggedOut => "You are logged out.", "Sie sind abgemeldet.";

    DashboardTitle => "Overview", "Übersicht";
    Machines => "Machines", "Maschinen";
    NoMachines => "No machines yet.", "Noch keine Maschinen.";
    ColMachine => "Machine", "Maschine";
    ColOrg => "Organization", "Organisation";
    ColLink => "Connection", "Verbindung";
    Online => "online", "online";
    Offline => "offline", "offline";
    ColSwitch => "Key switch", "Schlüsselschalter";
    SwitchOn => "on", "ein";
    SwitchOff => "off", "aus";
    Unknown => "unknown", "unbekannt";
    ColTrust => "Approvals the agent accepts", "Freigaben, die der Agent annimmt";
    TrustSigned => "signed by an operator's key only", "nur vom Betreiber signierte";
    TrustServer => "the server's", "die des Servers";
    ColCertUntil => "Certificate valid until", "Zertifikat gültig bis";
    ColAgent => "Agent software (while online)", "Agent-Software (solange online)";
    NotEnrolled => "not enrolled yet", "noch nicht registriert";
    Revoked => "revoked", "gesperrt";
    LastSeen => "last seen", "zuletzt gesehen";

    Waiting => "Waiting for approval", "Warten auf Freigabe";
    NoneWaiting => "No session is waiting for approval.", "Keine Sitzung wartet auf Freigabe.";

    SessionsTitle => "Sessions", "Sitzungen";
    NoSessions => "No sessions.", "Keine Sitzungen.";
    ColSession => "Session", "Sitzung";
    ColState => "State", "Status";
    ColTargets => "Targets", "Ziele";
    ColTechnicians => "Technicians", "Techniker";
    ColWindow => "Time window (UTC)", "Zeitfenster (UTC)";
    ColReason => "Reason", "Grund";
    ColPreparedBy => "Prepared by", "Vorbereitet von";
    ColDecidedBy => "Decided by", "Entschieden von";
    ColActions => "Actions", "Aktionen";
    WindowTo => "to", "bis";
    Approve => "Approve", "Freigeben";
    Reject => "Reject", "Ablehnen";
    EndNow => "End now", "Jetzt beenden";
    ApproveSession => "Approve session", "Sitzung freigeben";
    RejectSession => "Reject session", "Sitzung ablehnen";
    EndSession => "End session", "Sitzung beenden";
    NeedsSigned => "This machine accepts only approvals signed with an approver's key: with your security key (below), or on the command line:", "Diese Maschine nimmt nur mit dem Schlüssel eines Freigebenden signierte Freigaben an: mit Ihrem Sicherheitsschlüssel (unten) oder auf der Kommandozeile:";
    NoApprovalNeeded => "needs no approval", "braucht keine Freigabe";

    StatePrepared => "prepared", "vorbereitet";
    StateRequested => "requested", "angefragt";
    StateApproved => "approved", "freigegeben";
    StateActive => "active", "aktiv";
    StateEnded => "ended", "beendet";
    StateRejected => "rejected", "abgelehnt";
    StateExpired => "expired", "abgelaufen";
    StateRevoked => "revoked", "widerrufen";

    DoneApprove => "Session approved:", "Sitzung freigegeben:";
    DoneReject => "Session rejected:", "Sitzung abgelehnt:";
    DoneEnd => "Session ended:", "Sitzung beendet:";
    DoneCut => "Connection cut in session:", "Verbindung getrennt in Sitzung:";
    DonePrepare => "Session prepared:", "Sitzung vorbereitet:";

    PrepareTitle => "Prepare a session", "Sitzung vorbereiten";
    PrepareButton => "Prepare session", "Sitzung vorbereiten";
    FieldSessionName => "Session name", "Name der Sitzung";
    HintName => "1 to 64 letters, digits, - _ . @ (for example the ticket number).", "1 bis 64 Buchstaben, Ziffern, - _ . @ (zum Beispiel die Ticketnummer).";
    HintTargets => "Targets, separated by commas. The machines' agents report:", "Ziele, durch Kommas getrennt. Die Agenten der Maschinen melden:";
    HintList => "User names of technicians, separated by commas.", "Benutzernamen der Techniker, durch Kommas getrennt.";
    FieldFrom => "Start (UTC; empty: now)", "Beginn (UTC; leer: sofort)";
    FieldDuration => "Duration", "Dauer";
    HintDuration => "For example 30m, 2h, 1day.", "Zum Beispiel 30m, 2h, 1day.";
    FieldApproval => "An approver of the operator must release it", "Ein Freigebender des Betreibers muss sie freigeben";
    FieldRecord => "Record the connections (at the machine's agent)", "Verbindungen aufzeichnen (beim Agenten der Maschine)";
    SessionTrail => "What happened in this session (audit trail)", "Was in dieser Sitzung geschah (Protokoll)";
    BackToSessions => "Back to the sessions", "Zurück zu den Sitzungen";
    StartTitle => "Start the connection", "Verbindung starten";
    StartCommand => "On your computer, in a terminal:", "Auf Ihrem Rechner, in einem Terminal:";
    StartLink => "Or with one click, if fernwart handles these links on your computer:", "Oder mit einem Klick, wenn fernwart diese Links auf Ihrem Rechner öffnet:";
    StartRegister => "Set that up once with", "Einmal einrichten mit";

    Yes => "yes", "ja";
    No => "no", "nein";
    FieldName => "Name", "Name";
    FieldOrgOptional => "Organization (optional)", "Organisation (optional)";
    MachinesTitle => "Machines", "Maschinen";
    ColTargetsReported => "Targets (as its agent reports them)", "Ziele (wie der Agent sie meldet)";
    Revoke => "Revoke", "Sperren";
    RevokeMachine => "Revoke machine", "Maschine sperren";
    AddMachine => "Add a machine", "Maschine hinzufügen";
    MachineAdded => "Machine added:", "Maschine hinzugefügt:";
    TokenOnce => "The enrolment token is shown only this once. It is valid until", "Das Registrierungs-Token wird nur dieses eine Mal angezeigt. Es gilt bis";
    EnrollLine => "Run on the machine's gateway:", "Auf dem Gateway der Maschine ausführen:";
    EnrollCa => "Copy the server's CA certificate (ca.pem in the server's data directory) to the gateway first.", "Kopieren Sie vorher das CA-Zertifikat des Servers (ca.pem im Datenverzeichnis des Servers) auf das Gateway.";
    Copy => "Copy", "Kopieren";
    BackToMachines => "Back to the machines", "Zurück zu den Maschinen";
    DoneMachineRevoke => "Machine revoked:", "Maschine gesperrt:";
    UsersTitle => "Users", "Benutzer";
    RoleLabelCol => "Role", "Rolle";
    ColSecondFactor => "Second factor", "Zweiter Faktor";
    ColAccountUntil => "Account valid until", "Konto gültig bis";
    Disabled => "disabled", "deaktiviert";
    Active => "active", "aktiv";
    Disable => "Disable", "Deaktivieren";
    DisableUser => "Disable user", "Benutzer deaktivieren";
    AddUser => "Add a user", "Benutzer hinzufügen";
    FieldExpires => "Account valid until (UTC, optional)", "Konto gültig bis (UTC, optional)";
    FieldInitialPassword => "Initial password (the policy on the settings page applies)", "Erstes Passwort (es gilt die Richtlinie der Einstellungen)";
    DoneUserAdd => "User added:", "Benutzer hinzugefügt:";
    DoneUserDisable => "User disabled:", "Benutzer deaktiviert:";
    OrgsTitle => "Organizations and service contracts", "Organisationen und Serviceverträge";
    NoOrgs => "No organizations yet.", "Noch keine Organisationen.";
    FieldKind => "Kind", "Art";
    KindOperator => "Operator", "Betreiber";
    KindProvider => "Service provider", "Dienstleister";
    ColContracts => "Service contracts with", "Serviceverträge mit";
    FieldNoApproval => "Sessions without approval allowed", "Sitzungen ohne Freigabe erlaubt";
    FieldMaxSession => "Longest session (e.g. 8h)", "Längste Sitzung (z. B. 8h)";
    FieldRequireSigned => "Approvals must be signed", "Freigaben müssen signiert sein";
    AddOrg => "Add an organization", "Organisation hinzufügen";
    OrgRules => "Rules of the operator", "Regeln des Betreibers";
    OrgRulesHint => "Empty longest session: the server's limit.", "Längste Sitzung leer: Grenze des Servers.";
    SaveRules => "Save rules", "Regeln speichern";
    DoneOrgSet => "Rules changed:", "Regeln geändert:";
    AddContract => "Add a service contract", "Servicevertrag hinzufügen";
    DoneOrgAdd => "Organization added:", "Organisation hinzugefügt:";
    DoneContractAdd => "Service contract added:", "Servicevertrag hinzugefügt:";
    SettingsTitle => "Settings", "Einstellungen";
    SettingsReadOnly => "Fixed here: the server reads these at start from", "Hier fest: Der Server liest sie beim Start aus";
    SettingsLive => "A change here takes effect at once and takes precedence over", "Eine Änderung hier gilt sofort und hat Vorrang vor";
    SettingsColSetting => "Setting", "Einstellung";
    SettingsColValue => "Value in force", "Geltender Wert";
    SettingsColAllowed => "Allowed", "Erlaubt";
    SettingsColSource => "Source", "Herkunft";
    SettingsChanged => "changed in the console", "in der Konsole geändert";
    SettingsSave => "Save settings", "Einstellungen speichern";
    SettingsSaved => "Settings saved; they are in force now.", "Einstellungen gespeichert; sie gelten ab sofort.";
    SettingsUnchanged => "Nothing changed: every value was the current one.", "Nichts geändert: Jeder Wert war der geltende.";
    SetMinLength => "Password: minimum length", "Passwort: Mindestlänge";
    SetMinClasses => "Password: character classes required (of 4)", "Passwort: nötige Zeichenklassen (von 4)";
    SetHistory => "Password: earlier passwords refused", "Passwort: abgelehnte frühere Passwörter";
    SetRefuseCommon => "Password: common passwords refused", "Passwort: gängige Passwörter abgelehnt";
    SetLockoutThreshold => "Lockout after failed logins", "Sperre nach fehlgeschlagenen Anmeldungen";
    SetLockoutDuration => "Lockout duration", "Dauer der Sperre";
    SetLoginTtl => "Login lifetime", "Gültigkeit einer Anmeldung";
    SetIdle => "Login ends when unused for", "Anmeldung endet nach Nichtnutzung von";
    SetDefaultDuration => "Session: default time window", "Sitzung: Standard-Zeitfenster";
    SetNoApproval => "Session: without approval allowed (machines of no organization)", "Sitzung: ohne Freigabe erlaubt (Maschinen ohne Organisation)";
    SetTunnelIdle => "Connection closed when idle for", "Verbindung getrennt nach Leerlauf von";
    SetLinksPerUser => "Connect links one technician may hold at once (fixed)", "Gleichzeitige Verbindungen eines Technikers (fest)";
    SetEnrolTtl => "Enrolment token valid for", "Registrierungs-Token gültig für";
    SetCertTtl => "Machine certificate valid for", "Maschinenzertifikat gültig für";
    AuditTitle => "Audit trail", "Protokoll";
    FilterActor => "Who", "Wer";
    FilterAction => "Action", "Aktion";
    FilterSince => "From (UTC)", "Von (UTC)";
    FilterUntil => "Until (UTC)", "Bis (UTC)";
    Filter => "Show", "Anzeigen";
    Export => "Download this selection:", "Diese Auswahl herunterladen:";
    JsonLines => "JSON lines", "JSON Lines";
    NoRecords => "No records match.", "Keine passenden Einträge.";
    ColTime => "Time (UTC)", "Zeit (UTC)";
    ColObject => "Object", "Objekt";
    ColSource => "From", "Von";
    ColDetails => "Details", "Details";
    NextPage => "Next page", "Nächste Seite";

    LiveConnections => "Live connections", "Aktive Verbindungen";
    NoConnections => "Nobody is connected right now.", "Zurzeit ist niemand verbunden.";
    ColTarget => "Target", "Ziel";
    ColTechnician => "Technician", "Techniker";
    ColSince => "Connected since (UTC)", "Verbunden seit (UTC)";
    ColBytesUp => "Bytes to the machine", "Bytes zur Maschine";
    ColBytesDown => "Bytes from the machine", "Bytes von der Maschine";
    Cut => "Cut", "Trennen";
    CutConnection => "Cut connection to", "Verbindung trennen zu";
    ErrorConnectionGone => "This connection is no longer open.", "Diese Verbindung besteht nicht mehr.";

    ErrorTitle => "Not possible", "Nicht möglich";
    ErrorRefused => "The server refused this. Its reason:", "Der Server hat dies abgelehnt. Begründung:";
    ErrorForm => "This form has expired or did not come from this console. Reload the page and try again.", "Dieses Formular ist abgelaufen oder stammt nicht von dieser Konsole. Laden Sie die Seite neu und versuchen Sie es erneut.";
    ErrorInternal => "Something went wrong at the server. The event is logged; try again later.", "Auf dem Server ist ein Fehler aufgetreten. Er wurde protokolliert; versuchen Sie es später erneut.";
    ErrorBadField => "A field of this form holds a value the console does not offer.", "Ein Feld dieses Formulars enthält einen Wert, den die Konsole nicht anbietet.";
    ErrorNotFound => "There is no such page.", "Diese Seite gibt es nicht.";
    Back => "Back to the overview", "Zurück zur Übersicht";

    NavKeys => "Security keys", "Sicherheitsschlüssel";
    NavMfa => "Authenticator app", "Authenticator-App";
    MfaTitle => "Second factor: authenticator app", "Zweiter Faktor: Authenticator-App";
    MfaSetupOnly => "This account has no second factor yet. Set one up now; until then this login can do nothing else.", "Dieses Konto hat noch keinen zweiten Faktor. Richten Sie jetzt einen ein; bis dahin kann diese Anmeldung nichts anderes.";
    MfaIsSetUp => "An authenticator app is set up for this account. To replace it, an admin must reset it.", "Für dieses Konto ist eine Authenticator-App eingerichtet. Ersetzen kann sie nur ein Administrator nach einem Zurücksetzen.";
    MfaNone => "No authenticator app is set up for this account yet. It gives you a six-digit code at every login (TOTP, RFC 6238).", "Für dieses Konto ist noch keine Authenticator-App eingerichtet. Sie liefert bei jeder Anmeldung einen sechsstelligen Code (TOTP, RFC 6238).";
    MfaStart => "Set up an authenticator app", "Authenticator-App einrichten";
    MfaRestart => "Start again with a new secret", "Mit neuem Geheimnis neu beginnen";
    MfaAddSecret => "Add this account to your authenticator app: enter the secret, or open the link on the device that holds the app.", "Fügen Sie dieses Konto Ihrer Authenticator-App hinzu: Geben Sie das Geheimnis ein oder öffnen Sie den Link auf dem Gerät mit der App.";
    MfaSecret => "Secret (base32)", "Geheimnis (Base32)";
    MfaUri => "otpauth link", "otpauth-Link";
    MfaCode => "Code the app shows now", "Aktueller Code aus der App";
    MfaConfirm => "Confirm", "Bestätigen";
    MfaWrongCode => "That code does not match. Check the app's clock and enter the current code.", "Der Code passt nicht. Prüfen Sie die Uhr des Geräts und geben Sie den aktuellen Code ein.";
    MfaDone => "Authenticator app set up: it is asked for at your next login.", "Authenticator-App eingerichtet: Sie wird bei der nächsten Anmeldung abgefragt.";
    KeyLogin => "Log in with security key", "Mit Sicherheitsschlüssel anmelden";
    KeyFailed => "The security key did not answer, or its answer was refused.", "Der Sicherheitsschlüssel hat nicht geantwortet, oder seine Antwort wurde abgelehnt.";
    KeysTitle => "Security keys", "Sicherheitsschlüssel";
    KeysIntro => "Security keys (FIDO2/WebAuthn) log you in in place of the code from your app, and sign approvals of sessions on machines that accept only signed approvals.", "Sicherheitsschlüssel (FIDO2/WebAuthn) ersetzen bei der Anmeldung den Code aus Ihrer App und signieren Freigaben von Sitzungen auf Maschinen, die nur signierte Freigaben annehmen.";
    NoKeys => "You have no security key yet.", "Sie haben noch keinen Sicherheitsschlüssel.";
    KeyAdded => "Security key registered.", "Sicherheitsschlüssel registriert.";
    KeyRemoved => "Security key removed.", "Sicherheitsschlüssel entfernt.";
    ColKeyName => "Name of the key", "Name des Schlüssels";
    ColFingerprint => "Fingerprint", "Fingerabdruck";
    ColAdded => "Registered", "Registriert";
    ColLastUsed => "Last used", "Zuletzt benutzt";
    KeyRemove => "Remove", "Entfernen";
    KeyAddTitle => "Register a security key", "Sicherheitsschlüssel registrieren";
    KeyAdd => "Register key", "Schlüssel registrieren";
    KeysForOperator => "For the machine's operator", "Für den Betreiber der Maschine";
    KeysForOperatorText => "For a machine to accept approvals signed with your keys, its operator adds this to the agent's agent.toml:", "Damit eine Maschine mit Ihren Schlüsseln signierte Freigaben annimmt, trägt ihr Betreiber dies in die agent.toml des Agenten ein:";
    SignWithKey => "Approve with security key", "Mit Sicherheitsschlüssel freigeben";
    SignTitle => "Approve with security key:", "Mit Sicherheitsschlüssel freigeben:";
    SignIntro => "Your security key signs exactly this grant; the machine checks the signature itself.", "Ihr Sicherheitsschlüssel signiert genau diese Freigabe; die Maschine prüft die Signatur selbst.";
    SignButton => "Sign and approve", "Signieren und freigeben";
    SignRecording => "Recorded at the machine", "Aufzeichnung an der Maschine";
    SignTechKeys => "End-to-end keys of connected technicians", "Ende-zu-Ende-Schlüssel verbundener Techniker";
    SignReload => "A technician who connects after this page was shown changes the grant: reload the page, then sign.", "Verbindet sich ein Techniker, nachdem diese Seite angezeigt wurde, ändert sich die Freigabe: Seite neu laden, dann signieren.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_has_both_languages() {
        for m in Msg::ALL {
            for l in Lang::ALL {
                let t = m.text(l);
                assert!(!t.trim().is_empty(), "{m:?} in {l:?} is empty");
                assert_eq!(t, t.trim(), "{m:?} in {l:?} has outer spaces");
            }
        }
    }

    #[test]
    fn accept_language_picks_the_best_we_speak() {
        assert_eq!(Lang::from_accept_language("de-DE,de;q=0.9,en;q=0.8"), Lang::De);
        assert_eq!(Lang::from_accept_language("fr-FR, en;q=0.5, de;q=0.7"), Lang::De);
        assert_eq!(Lang::from_accept_language("en-US,en;q=0.9,de;q=0.8"), Lang::En);
        assert_eq!(Lang::from_accept_language("fr, it"), Lang::En);
        assert_eq!(Lang::from_accept_language(""), Lang::En);
        assert_eq!(Lang::from_accept_language("de;q=0"), Lang::En);
        assert_eq!(Lang::from_accept_language("de;q=bogus, en;q=0.1"), Lang::En);
        assert_eq!(Lang::from_accept_language("DE"), Lang::De);
    }

    #[test]
    fn tags_parse() {
        assert_eq!(Lang::parse("de"), Some(Lang::De));
        assert_eq!(Lang::parse("de_AT"), Some(Lang::De));
        assert_eq!(Lang::parse("EN-gb"), Some(Lang::En));
        assert_eq!(Lang::parse("fr"), None);
        assert_eq!(Lang::parse(""), None);
        assert_eq!(parse_weight("0.125"), Some(125));
        assert_eq!(parse_weight("1.000"), Some(1000));
        assert_eq!(parse_weight("1.5"), None);
        assert_eq!(parse_weight("0.1234"), None);
    }
}
