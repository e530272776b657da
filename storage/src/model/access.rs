//! Model access levels: read < write < admin. A model's owner is always admin; a controller
//! superuser is admin on every model; everyone else has what `SetModelAccess` granted.

use starling_proto::model::{Access, Model, ModelUser};

use super::ModelError;

/// The access `user` has to `model`; `superuser` says whether the user is a controller
/// superuser. `Access::Unspecified` means none.
pub fn access_of(model: &Model, user: &str, superuser: bool) -> Access {
    if superuser || model.owner == user {
        return Access::Admin;
    }
    model
        .users
        .iter()
        .find(|u| u.name == user)
        .map_or(Access::Unspecified, ModelUser::access)
}

/// Refuses unless `user` has at least `needed` access to `model`; `what` names what the user
/// asked to do, for the refusal ("deploy", "read its log").
pub fn require_access(
    model: &Model,
    user: &str,
    superuser: bool,
    needed: Access,
    what: &str,
) -> Result<(), ModelError> {
    let has = access_of(model, user, superuser);
    if has as i32 >= needed as i32 {
        return Ok(());
    }
    Err(ModelError::PermissionDenied {
        user: user.to_owned(),
        model: model.name.clone(),
        has: match has {
            Access::Unspecified => "no",
            held => access_name(held),
        },
        needed: access_name(needed),
        what: what.to_owned(),
    })
}

/// The lowercase name of an access level ("read", "write", "admin", "none").
pub fn access_name(access: Access) -> &'static str {
    match access {
        Access::Unspecified => "none",
        Access::Read => "read",
        Access::Write => "write",
        Access::Admin => "admin",
    }
}

/// Grants `user` `access` to `model` (`Access::Unspecified` revokes). The owner's admin access
/// cannot be changed. Users stay sorted by name so the record encodes the same everywhere.
pub fn set_access(model: &mut Model, user: &str, access: Access) -> Result<(), ModelError> {
    if model.owner == user {
        return Err(ModelError::OwnerAccess {
            model: model.name.clone(),
            user: user.to_owned(),
        });
    }
    model.users.retain(|u| u.name != user);
    if access != Access::Unspecified {
        model.users.push(ModelUser {
            name: user.to_owned(),
            access: access as i32,
        });
        model.users.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(())
}

/// Takes `level` away from `user`, as `juju revoke` does: the user keeps the level below it
/// if they had more (admin → write, write → read, read → none) and is unchanged if they had
/// less. Returns the access left. Refused for the owner and for a user with no access.
pub fn revoke_access(model: &mut Model, user: &str, level: Access) -> Result<Access, ModelError> {
    if model.owner == user {
        return Err(ModelError::OwnerAccess {
            model: model.name.clone(),
            user: user.to_owned(),
        });
    }
    let current = access_of(model, user, false);
    if current == Access::Unspecified {
        return Err(ModelError::NoModelAccess {
            model: model.name.clone(),
            user: user.to_owned(),
        });
    }
    let below = match level {
        Access::Admin => Access::Write,
        Access::Write => Access::Read,
        Access::Read | Access::Unspecified => Access::Unspecified,
    };
    let left = if (current as i32) < (level as i32) {
        current
    } else {
        below
    };
    set_access(model, user, left)?;
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model {
            name: "prod".into(),
            owner: "alice".into(),
            ..Default::default()
        }
    }

    #[test]
    fn levels_are_ordered_and_the_owner_is_admin() {
        let mut m = model();
        assert_eq!(access_of(&m, "alice", false), Access::Admin);
        assert_eq!(access_of(&m, "bob", false), Access::Unspecified);
        assert_eq!(access_of(&m, "root", true), Access::Admin);
        set_access(&mut m, "bob", Access::Write).expect("grant");
        require_access(&m, "bob", false, Access::Read, "read it").expect("write ≥ read");
        require_access(&m, "bob", false, Access::Write, "deploy").expect("write");
        let err =
            require_access(&m, "bob", false, Access::Admin, "destroy it").expect_err("not admin");
        assert_eq!(
            err.to_string(),
            "user \"bob\" has write access to model \"prod\" and may not destroy it (admin access needed)"
        );
        let err = require_access(&m, "carol", false, Access::Read, "read it").expect_err("none");
        assert_eq!(
            err.to_string(),
            "user \"carol\" has no access to model \"prod\" and may not read it (read access needed)"
        );
    }

    #[test]
    fn grants_replace_revoke_and_keep_order() {
        let mut m = model();
        set_access(&mut m, "zed", Access::Read).expect("grant");
        set_access(&mut m, "bob", Access::Read).expect("grant");
        set_access(&mut m, "bob", Access::Admin).expect("raise");
        let names: Vec<&str> = m.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["bob", "zed"]);
        assert_eq!(access_of(&m, "bob", false), Access::Admin);
        set_access(&mut m, "bob", Access::Unspecified).expect("revoke");
        assert_eq!(access_of(&m, "bob", false), Access::Unspecified);
        assert!(matches!(
            set_access(&mut m, "alice", Access::Read),
            Err(ModelError::OwnerAccess { .. })
        ));
    }

    #[test]
    fn revoking_a_level_leaves_the_one_below() {
        let mut m = model();
        set_access(&mut m, "bob", Access::Admin).expect("grant");
        assert_eq!(
            revoke_access(&mut m, "bob", Access::Admin),
            Ok(Access::Write)
        );
        assert_eq!(access_of(&m, "bob", false), Access::Write);
        // Revoking more than the user has changes nothing.
        assert_eq!(
            revoke_access(&mut m, "bob", Access::Admin),
            Ok(Access::Write)
        );
        assert_eq!(
            revoke_access(&mut m, "bob", Access::Write),
            Ok(Access::Read)
        );
        assert_eq!(
            revoke_access(&mut m, "bob", Access::Read),
            Ok(Access::Unspecified)
        );
        assert!(m.users.is_empty());
        assert_eq!(
            revoke_access(&mut m, "bob", Access::Read),
            Err(ModelError::NoModelAccess {
                model: "prod".into(),
                user: "bob".into()
            })
        );
        // Revoking read from an admin takes everything.
        set_access(&mut m, "carol", Access::Admin).expect("grant");
        assert_eq!(
            revoke_access(&mut m, "carol", Access::Read),
            Ok(Access::Unspecified)
        );
        assert!(matches!(
            revoke_access(&mut m, "alice", Access::Write),
            Err(ModelError::OwnerAccess { .. })
        ));
    }
}
