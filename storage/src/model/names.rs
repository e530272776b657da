//! Name rules: model and application names, unit names (`app/N`), machine ids, endpoints
//! (`app` or `app:endpoint`), user names, uuids, blob digests and status entities
//! (`model`, `machine-0`, `application-web`, `unit-web-0`).

use super::ModelError;

/// Longest model, application, charm or endpoint name.
pub const NAME_CHARS_MAX: usize = 63;
/// Longest user name.
pub const USER_NAME_CHARS_MAX: usize = 64;

fn invalid(kind: &'static str, name: &str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidName {
        kind,
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// The rule shared by model, application, charm and endpoint names: lowercase letters, digits
/// and single '-' between them, starting with a letter, at most `NAME_CHARS_MAX` characters.
fn check_label(kind: &'static str, name: &str) -> Result<(), ModelError> {
    if name.is_empty() {
        return Err(invalid(kind, name, "it is empty"));
    }
    if name.chars().count() > NAME_CHARS_MAX {
        return Err(invalid(
            kind,
            name,
            format!("it is longer than {NAME_CHARS_MAX} characters"),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid(kind, name, "it must start with a lowercase letter"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(invalid(
            kind,
            name,
            format!("it contains {bad:?}; use only a-z, 0-9 and '-'"),
        ));
    }
    if name.ends_with('-') || name.contains("--") {
        return Err(invalid(
            kind,
            name,
            "'-' must sit between letters or digits",
        ));
    }
    Ok(())
}

/// Checks a model name.
pub fn check_model_name(name: &str) -> Result<(), ModelError> {
    check_label("model name", name)
}

/// Checks an application name.
pub fn check_application_name(name: &str) -> Result<(), ModelError> {
    check_label("application name", name)
}

/// Checks a charm name (the application-name rule).
pub fn check_charm_name(name: &str) -> Result<(), ModelError> {
    check_label("charm name", name)
}

/// Checks an endpoint (relation) name of a charm.
pub fn check_endpoint_name(name: &str) -> Result<(), ModelError> {
    check_label("endpoint name", name)
}

/// Parses a decimal number without sign or leading zeros (`0`, `1`, `17`, not `01`).
fn parse_number(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// Parses a machine id (`0`, `1`, …).
pub fn parse_machine_id(id: &str) -> Result<u64, ModelError> {
    parse_number(id).ok_or_else(|| {
        invalid(
            "machine id",
            id,
            "machine ids are decimal numbers without leading zeros (0, 1, 2, ...)",
        )
    })
}

/// A unit's name from its application and number.
pub fn unit_name(application: &str, number: u64) -> String {
    format!("{application}/{number}")
}

/// Parses a unit name `app/N` into the application and the number.
pub fn parse_unit_name(name: &str) -> Result<(&str, u64), ModelError> {
    let (application, number) = name
        .split_once('/')
        .ok_or_else(|| invalid("unit name", name, "unit names look like \"web/0\""))?;
    check_application_name(application).map_err(|e| match e {
        ModelError::InvalidName { reason, .. } => invalid("unit name", name, reason),
        other => other,
    })?;
    let number = parse_number(number).ok_or_else(|| {
        invalid(
            "unit name",
            name,
            "the unit number after '/' must be a decimal number without leading zeros",
        )
    })?;
    Ok((application, number))
}

/// One side of `integrate`: an application, optionally with one of its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRef {
    /// The application.
    pub application: String,
    /// The endpoint, when given as `app:endpoint`.
    pub endpoint: Option<String>,
}

impl std::fmt::Display for EndpointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.endpoint {
            Some(endpoint) => write!(f, "{}:{endpoint}", self.application),
            None => f.write_str(&self.application),
        }
    }
}

/// Parses `app` or `app:endpoint`.
pub fn parse_endpoint(text: &str) -> Result<EndpointRef, ModelError> {
    let (application, endpoint) = match text.split_once(':') {
        Some((application, endpoint)) => (application, Some(endpoint)),
        None => (text, None),
    };
    let rename = |e: ModelError| match e {
        ModelError::InvalidName { kind, reason, .. } => {
            invalid("endpoint", text, format!("{kind}: {reason}"))
        }
        other => other,
    };
    check_application_name(application).map_err(rename)?;
    if let Some(endpoint) = endpoint {
        check_endpoint_name(endpoint).map_err(rename)?;
    }
    Ok(EndpointRef {
        application: application.to_owned(),
        endpoint: endpoint.map(str::to_owned),
    })
}

/// Checks a user name: a lowercase letter or digit first, then lowercase letters, digits, '.',
/// '-' or '_', ending with a letter or digit, at most `USER_NAME_CHARS_MAX` characters.
pub fn check_user_name(name: &str) -> Result<(), ModelError> {
    let kind = "user name";
    if name.is_empty() {
        return Err(invalid(kind, name, "it is empty"));
    }
    if name.chars().count() > USER_NAME_CHARS_MAX {
        return Err(invalid(
            kind,
            name,
            format!("it is longer than {USER_NAME_CHARS_MAX} characters"),
        ));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if let Some(bad) = name
        .chars()
        .find(|c| !(alnum(*c) || matches!(c, '.' | '-' | '_')))
    {
        return Err(invalid(
            kind,
            name,
            format!("it contains {bad:?}; use only a-z, 0-9, '.', '-' and '_'"),
        ));
    }
    if !name.starts_with(alnum) || !name.ends_with(alnum) {
        return Err(invalid(
            kind,
            name,
            "it must start and end with a letter or digit",
        ));
    }
    Ok(())
}

/// Checks a uuid in its lowercase hyphenated form (`8-4-4-4-12` hex digits).
pub fn check_uuid(uuid: &str) -> Result<(), ModelError> {
    let groups: Vec<&str> = uuid.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = uuid
        .bytes()
        .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if lengths != [8, 4, 4, 4, 12] || !hex {
        return Err(invalid(
            "uuid",
            uuid,
            "uuids are 32 lowercase hex digits in groups 8-4-4-4-12",
        ));
    }
    Ok(())
}

/// Checks a blob digest: 64 lowercase hex digits (a sha256).
pub fn check_digest(digest: &str) -> Result<(), ModelError> {
    if digest.len() != 64
        || !digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid(
            "digest",
            digest,
            "digests are sha256 in 64 lowercase hex digits",
        ));
    }
    Ok(())
}

/// What a status report is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entity {
    /// The model itself (`model`).
    Model,
    /// A machine (`machine-0`).
    Machine(u64),
    /// An application (`application-web`).
    Application(String),
    /// A unit (`unit-web-0`).
    Unit {
        /// The application.
        application: String,
        /// The unit number.
        number: u64,
    },
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entity::Model => f.write_str("model"),
            Entity::Machine(id) => write!(f, "machine-{id}"),
            Entity::Application(name) => write!(f, "application-{name}"),
            Entity::Unit {
                application,
                number,
            } => write!(f, "unit-{application}-{number}"),
        }
    }
}

/// Parses a status entity: `model`, `machine-N`, `application-APP` or `unit-APP-N`.
pub fn parse_entity(text: &str) -> Result<Entity, ModelError> {
    let bad = |reason: &str| {
        invalid(
            "entity",
            text,
            format!("{reason} (entities are \"model\", \"machine-0\", \"application-web\", \"unit-web-0\")"),
        )
    };
    if text == "model" {
        return Ok(Entity::Model);
    }
    if let Some(id) = text.strip_prefix("machine-") {
        return parse_number(id)
            .map(Entity::Machine)
            .ok_or_else(|| bad("bad machine id"));
    }
    if let Some(name) = text.strip_prefix("application-") {
        check_application_name(name).map_err(|_| bad("bad application name"))?;
        return Ok(Entity::Application(name.to_owned()));
    }
    if let Some(rest) = text.strip_prefix("unit-") {
        let (application, number) = rest.rsplit_once('-').ok_or_else(|| bad("no unit number"))?;
        check_application_name(application).map_err(|_| bad("bad application name"))?;
        let number = parse_number(number).ok_or_else(|| bad("bad unit number"))?;
        return Ok(Entity::Unit {
            application: application.to_owned(),
            number,
        });
    }
    Err(bad("unknown kind of entity"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reason(result: Result<impl std::fmt::Debug, ModelError>) -> String {
        match result {
            Err(ModelError::InvalidName { reason, .. }) => reason,
            other => panic!("expected InvalidName, got {other:?}"),
        }
    }

    #[test]
    fn labels() {
        for good in ["web", "a", "my-app2", "x1-2-y", &"a".repeat(63)] {
            check_application_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            check_model_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        assert_eq!(reason(check_model_name("")), "it is empty");
        assert!(reason(check_model_name(&"a".repeat(64))).contains("longer than 63"));
        assert!(reason(check_model_name("1web")).contains("start with a lowercase letter"));
        assert!(reason(check_model_name("Web")).contains("start with a lowercase letter"));
        assert!(reason(check_model_name("we_b")).contains("'_'"));
        assert!(reason(check_model_name("web-")).contains("between"));
        assert!(reason(check_model_name("we--b")).contains("between"));
        assert_eq!(
            check_application_name("we b")
                .expect_err("space")
                .to_string(),
            "invalid application name \"we b\": it contains ' '; use only a-z, 0-9 and '-'"
        );
    }

    #[test]
    fn machine_ids() {
        assert_eq!(parse_machine_id("0").expect("valid"), 0);
        assert_eq!(parse_machine_id("42").expect("valid"), 42);
        for bad in ["", "01", "-1", "+1", "1a", " 1", "99999999999999999999"] {
            assert!(parse_machine_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unit_names() {
        assert_eq!(parse_unit_name("web/0").expect("valid"), ("web", 0));
        assert_eq!(parse_unit_name("my-db/12").expect("valid"), ("my-db", 12));
        assert!(reason(parse_unit_name("web")).contains("look like"));
        assert!(reason(parse_unit_name("web/")).contains("unit number"));
        assert!(reason(parse_unit_name("web/01")).contains("leading zeros"));
        assert!(reason(parse_unit_name("Web/0")).contains("lowercase"));
        assert!(reason(parse_unit_name("web/0/1")).contains("unit number"));
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("web").expect("valid"),
            EndpointRef {
                application: "web".into(),
                endpoint: None
            }
        );
        let both = parse_endpoint("web:db").expect("valid");
        assert_eq!(both.endpoint.as_deref(), Some("db"));
        assert_eq!(both.to_string(), "web:db");
        assert!(reason(parse_endpoint("web:")).contains("endpoint name: it is empty"));
        assert!(reason(parse_endpoint(":db")).contains("application name"));
        assert!(reason(parse_endpoint("web:db:x")).contains("':'"));
    }

    #[test]
    fn user_names() {
        for good in ["admin", "bob.smith", "a_b-c", "7", "x9"] {
            check_user_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["", "Bob", "-bob", "bob.", "bo b", "bob@x", &"a".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uuids_and_digests() {
        check_uuid("0b5f6d2e-1c3a-4e4f-9a7b-2d3c4e5f6a7b").expect("valid");
        assert!(check_uuid("0B5F6D2E-1C3A-4E4F-9A7B-2D3C4E5F6A7B").is_err());
        assert!(check_uuid("0b5f6d2e1c3a4e4f9a7b2d3c4e5f6a7b").is_err());
        assert!(check_uuid("").is_err());
        check_digest(&"ab".repeat(32)).expect("valid");
        assert!(check_digest(&"AB".repeat(32)).is_err());
        assert!(check_digest("abc").is_err());
    }

    #[test]
    fn entities() {
        assert_eq!(parse_entity("model").expect("valid"), Entity::Model);
        assert_eq!(
            parse_entity("machine-3").expect("valid"),
            Entity::Machine(3)
        );
        assert_eq!(
            parse_entity("unit-my-app-12").expect("valid"),
            Entity::Unit {
                application: "my-app".into(),
                number: 12
            }
        );
        assert_eq!(
            parse_entity("application-web").expect("valid"),
            Entity::Application("web".into())
        );
        for bad in [
            "",
            "models",
            "machine-",
            "machine-01",
            "unit-web",
            "unit--0",
            "host-1",
        ] {
            assert!(parse_entity(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn valid_labels_round_trip_through_units_and_entities(
            name in "[a-z]([a-z0-9]{0,10}(-[a-z0-9]{1,10}){0,3})",
            number in any::<u64>(),
            machine in any::<u64>(),
        ) {
            check_application_name(&name).expect("generated names are valid");
            let unit = unit_name(&name, number);
            prop_assert_eq!(parse_unit_name(&unit).expect("parses"), (name.as_str(), number));
            let entity = Entity::Unit { application: name.clone(), number };
            prop_assert_eq!(parse_entity(&entity.to_string()).expect("parses"), entity);
            prop_assert_eq!(parse_machine_id(&machine.to_string()).expect("parses"), machine);
        }

        #[test]
        fn name_checks_never_panic_and_accept_only_the_alphabet(text in "\\PC{0,80}") {
            if check_model_name(&text).is_ok() {
                prop_assert!(text.len() <= NAME_CHARS_MAX);
                prop_assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            }
            let _ = parse_unit_name(&text);
            let _ = parse_endpoint(&text);
            let _ = parse_entity(&text);
            let _ = check_user_name(&text);
        }
    }
}
