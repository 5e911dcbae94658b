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
    LoginNeedsMfa => "This account has no second factor yet. Set it up with the command line first:", "Dieses Konto hat noch keinen zweiten Faktor. Richten Sie ihn zuerst mit der Kommandozeile ein:";
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

    ErrorTitle => "Not possible", "Nicht möglich";
    ErrorRefused => "The server refused this. Its reason:", "Der Server hat dies abgelehnt. Begründung:";
    ErrorForm => "This form has expired or did not come from this console. Reload the page and try again.", "Dieses Formular ist abgelaufen oder stammt nicht von dieser Konsole. Laden Sie die Seite neu und versuchen Sie es erneut.";
    ErrorInternal => "Something went wrong at the server. The event is logged; try again later.", "Auf dem Server ist ein Fehler aufgetreten. Er wurde protokolliert; versuchen Sie es später erneut.";
    ErrorNotFound => "There is no such page.", "Diese Seite gibt es nicht.";
    Back => "Back to the overview", "Zurück zur Übersicht";

    NavKeys => "Security keys", "Sicherheitsschlüssel";
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
    Yes => "yes", "ja";
    No => "no", "nein";
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
