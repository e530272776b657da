//! Relation rules, as in Juju: `integrate a b` relates one `provides` endpoint of one side to
//! one `requires` endpoint of the other with the same interface (or the endpoints named
//! explicitly); an application relates to itself only through a peer endpoint; a relation
//! exists at most once.

use starling_proto::model::{Endpoint, Relation, RelationEndpoint, Role};

use super::names::EndpointRef;
use super::ModelError;

/// One side of a candidate relation: an application with the endpoint picked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side<'a> {
    /// The application.
    pub application: &'a str,
    /// Its endpoint.
    pub endpoint: &'a Endpoint,
}

/// The relation `integrate` would create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationMatch {
    /// One endpoint (peer) or two (in the order given).
    pub endpoints: Vec<RelationEndpoint>,
    /// The shared interface.
    pub interface: String,
}

/// `"a:x b:y"` (or `"a:x"` for a peer relation): how relations are named to operators.
pub fn relation_key(endpoints: &[RelationEndpoint]) -> String {
    endpoints
        .iter()
        .map(|e| format!("{}:{}", e.application, e.endpoint))
        .collect::<Vec<_>>()
        .join(" ")
}

fn sorted_key(endpoints: &[RelationEndpoint]) -> Vec<(String, String)> {
    let mut key: Vec<(String, String)> = endpoints
        .iter()
        .map(|e| (e.application.clone(), e.endpoint.clone()))
        .collect();
    key.sort();
    key
}

fn candidates<'a>(
    side: &EndpointRef,
    endpoints: &'a [Endpoint],
) -> Result<Vec<&'a Endpoint>, ModelError> {
    match &side.endpoint {
        Some(name) => match endpoints.iter().find(|e| &e.name == name) {
            Some(endpoint) => Ok(vec![endpoint]),
            None => Err(ModelError::EndpointNotFound {
                application: side.application.clone(),
                endpoint: name.clone(),
                known: endpoints.iter().map(|e| e.name.clone()).collect(),
            }),
        },
        None => Ok(endpoints.iter().collect()),
    }
}

fn describe(application: &str, endpoints: &[&Endpoint]) -> String {
    if endpoints.is_empty() {
        return format!("{application} has no endpoints");
    }
    let listed: Vec<String> = endpoints
        .iter()
        .map(|e| {
            let role = match e.role() {
                Role::Provides => "provides",
                Role::Requires => "requires",
                Role::Peer => "peer",
            };
            format!("{application}:{} ({role} {})", e.name, e.interface)
        })
        .collect();
    listed.join(", ")
}

fn relation_endpoint(application: &str, endpoint: &Endpoint) -> RelationEndpoint {
    RelationEndpoint {
        application: application.to_owned(),
        endpoint: endpoint.name.clone(),
        role: endpoint.role,
    }
}

/// Decides the relation `integrate a b` makes, given each application's endpoints and the
/// model's existing relations.
pub fn match_relation(
    a: &EndpointRef,
    a_endpoints: &[Endpoint],
    b: &EndpointRef,
    b_endpoints: &[Endpoint],
    existing: &[Relation],
) -> Result<RelationMatch, ModelError> {
    let a_candidates = candidates(a, a_endpoints)?;
    let b_candidates = candidates(b, b_endpoints)?;
    let no_match = |reason: String| ModelError::NoMatchingRelation {
        endpoint_a: a.to_string(),
        endpoint_b: b.to_string(),
        reason,
    };
    let found: Vec<RelationMatch> = if a.application == b.application {
        // Only a peer endpoint relates an application to itself, and then to the same endpoint.
        let mut peers: Vec<&Endpoint> = a_candidates
            .iter()
            .filter(|ea| ea.role() == Role::Peer)
            .filter(|ea| b_candidates.iter().any(|eb| eb.name == ea.name))
            .copied()
            .collect();
        peers.dedup_by(|x, y| x.name == y.name);
        if peers.is_empty() {
            return Err(no_match(format!(
                "an application can only relate to itself through a peer endpoint ({})",
                describe(&a.application, &a_candidates)
            )));
        }
        peers
            .into_iter()
            .map(|endpoint| RelationMatch {
                endpoints: vec![relation_endpoint(&a.application, endpoint)],
                interface: endpoint.interface.clone(),
            })
            .collect()
    } else {
        let mut found = Vec::new();
        for ea in &a_candidates {
            for eb in &b_candidates {
                let complementary = matches!(
                    (ea.role(), eb.role()),
                    (Role::Provides, Role::Requires) | (Role::Requires, Role::Provides)
                );
                if complementary && ea.interface == eb.interface {
                    found.push(RelationMatch {
                        endpoints: vec![
                            relation_endpoint(&a.application, ea),
                            relation_endpoint(&b.application, eb),
                        ],
                        interface: ea.interface.clone(),
                    });
                }
            }
        }
        if found.is_empty() {
            return Err(no_match(format!(
                "no provides/requires pair shares an interface ({}; {})",
                describe(&a.application, &a_candidates),
                describe(&b.application, &b_candidates)
            )));
        }
        found
    };
    if found.len() > 1 {
        return Err(ModelError::AmbiguousRelation {
            candidates: found.iter().map(|m| relation_key(&m.endpoints)).collect(),
        });
    }
    let chosen = found.into_iter().next().expect("one candidate left");
    let key = sorted_key(&chosen.endpoints);
    if existing.iter().any(|r| sorted_key(&r.endpoints) == key) {
        return Err(ModelError::RelationExists {
            relation: relation_key(&chosen.endpoints),
        });
    }
    Ok(chosen)
}

fn side_matches(side: &EndpointRef, endpoint: &RelationEndpoint) -> bool {
    side.application == endpoint.application
        && side
            .endpoint
            .as_ref()
            .is_none_or(|e| *e == endpoint.endpoint)
}

/// Finds the relation `remove-relation a b` names among `existing`.
pub fn find_relation<'r>(
    a: &EndpointRef,
    b: &EndpointRef,
    existing: &'r [Relation],
) -> Result<&'r Relation, ModelError> {
    let found: Vec<&Relation> = existing
        .iter()
        .filter(|r| match r.endpoints.as_slice() {
            [peer] => side_matches(a, peer) && side_matches(b, peer),
            [x, y] => {
                (side_matches(a, x) && side_matches(b, y))
                    || (side_matches(a, y) && side_matches(b, x))
            }
            _ => false,
        })
        .collect();
    match found.as_slice() {
        [] => Err(ModelError::RelationNotFound {
            endpoint_a: a.to_string(),
            endpoint_b: b.to_string(),
        }),
        [one] => Ok(one),
        many => Err(ModelError::AmbiguousRelation {
            candidates: many.iter().map(|r| relation_key(&r.endpoints)).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::names::parse_endpoint;

    fn ep(name: &str, interface: &str, role: Role) -> Endpoint {
        Endpoint {
            name: name.into(),
            interface: interface.into(),
            role: role as i32,
        }
    }

    fn wordpress() -> Vec<Endpoint> {
        vec![
            ep("website", "http", Role::Provides),
            ep("db", "mysql", Role::Requires),
            ep("backup-db", "mysql", Role::Requires),
            ep("cluster", "wp-peer", Role::Peer),
        ]
    }

    fn mysql() -> Vec<Endpoint> {
        vec![
            ep("db", "mysql", Role::Provides),
            ep("cluster", "mysql-peer", Role::Peer),
        ]
    }

    fn haproxy() -> Vec<Endpoint> {
        vec![ep("backend", "http", Role::Requires)]
    }

    fn integrate(
        a: &str,
        a_eps: &[Endpoint],
        b: &str,
        b_eps: &[Endpoint],
        existing: &[Relation],
    ) -> Result<RelationMatch, ModelError> {
        let a = parse_endpoint(a).expect("valid");
        let b = parse_endpoint(b).expect("valid");
        match_relation(&a, a_eps, &b, b_eps, existing)
    }

    #[test]
    fn unique_interface_match_is_found() {
        let m = integrate("haproxy", &haproxy(), "wordpress", &wordpress(), &[]).expect("match");
        assert_eq!(
            relation_key(&m.endpoints),
            "haproxy:backend wordpress:website"
        );
        assert_eq!(m.interface, "http");
    }

    #[test]
    fn ambiguity_names_the_candidates_and_explicit_endpoints_resolve_it() {
        let err =
            integrate("wordpress", &wordpress(), "mysql", &mysql(), &[]).expect_err("ambiguous");
        assert_eq!(
            err,
            ModelError::AmbiguousRelation {
                candidates: vec![
                    "wordpress:db mysql:db".into(),
                    "wordpress:backup-db mysql:db".into()
                ]
            }
        );
        assert!(err.to_string().contains("name the endpoints explicitly"));
        let m = integrate("wordpress:db", &wordpress(), "mysql", &mysql(), &[]).expect("match");
        assert_eq!(relation_key(&m.endpoints), "wordpress:db mysql:db");
    }

    #[test]
    fn no_match_explains_both_sides() {
        let err = integrate("haproxy", &haproxy(), "mysql", &mysql(), &[]).expect_err("none");
        let text = err.to_string();
        assert!(matches!(err, ModelError::NoMatchingRelation { .. }));
        assert!(text.contains("haproxy:backend (requires http)"), "{text}");
        assert!(text.contains("mysql:db (provides mysql)"), "{text}");
        // Same interface but same role does not match.
        let err =
            integrate("wordpress:db", &wordpress(), "haproxy", &haproxy(), &[]).expect_err("none");
        assert!(matches!(err, ModelError::NoMatchingRelation { .. }));
        let err = integrate("wordpress:nope", &wordpress(), "mysql", &mysql(), &[])
            .expect_err("unknown endpoint");
        assert!(matches!(err, ModelError::EndpointNotFound { .. }));
        assert!(err
            .to_string()
            .contains("(it has: website, db, backup-db, cluster)"));
    }

    #[test]
    fn self_relations_only_through_peers() {
        let err = integrate("haproxy", &haproxy(), "haproxy", &haproxy(), &[]).expect_err("self");
        assert!(err
            .to_string()
            .contains("only relate to itself through a peer"));
        let m = integrate("mysql", &mysql(), "mysql", &mysql(), &[]).expect("peer");
        assert_eq!(relation_key(&m.endpoints), "mysql:cluster");
        let m = integrate(
            "wordpress:cluster",
            &wordpress(),
            "wordpress",
            &wordpress(),
            &[],
        )
        .expect("peer");
        assert_eq!(m.interface, "wp-peer");
    }

    #[test]
    fn duplicates_are_refused_in_either_order() {
        let m = integrate("haproxy", &haproxy(), "wordpress", &wordpress(), &[]).expect("match");
        let existing = [Relation {
            id: 0,
            endpoints: m.endpoints,
            interface: m.interface,
            life: 0,
        }];
        let err = integrate("wordpress", &wordpress(), "haproxy", &haproxy(), &existing)
            .expect_err("duplicate");
        assert_eq!(
            err,
            ModelError::RelationExists {
                relation: "wordpress:website haproxy:backend".into()
            }
        );
        let a = parse_endpoint("wordpress").expect("valid");
        let b = parse_endpoint("haproxy:backend").expect("valid");
        assert_eq!(find_relation(&a, &b, &existing).expect("found").id, 0);
        let c = parse_endpoint("mysql").expect("valid");
        assert!(matches!(
            find_relation(&a, &c, &existing),
            Err(ModelError::RelationNotFound { .. })
        ));
    }
}
