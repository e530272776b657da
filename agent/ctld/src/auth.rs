//! Bearer-token authentication of client calls. Tokens are random, stored only as sha256
//! hashes, and compared in constant time.

use rand::RngCore;
use sha2::{Digest, Sha256};
use starling_proto::command::{authority, Authority};
use starling_proto::model::Access;
use tonic::{Request, Status};

use starling_raft::store::StateView;

use crate::identity::AuthFile;

/// The controller access of a user who may do everything.
pub const SUPERUSER: &str = "superuser";

/// A fresh random token: 32 bytes, hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    /// User name.
    pub user: String,
    /// Access level ("superuser" for the admin).
    pub access: String,
    /// A bootstrap user (`auth.yaml`), not a user of the replicated state.
    pub bootstrap: bool,
}

impl Caller {
    /// What applying checks again for a command this caller asks for to do `what`: `needed`
    /// access to model `model_uuid` ("" and `Access::Unspecified` for none) and, when
    /// `superuser`, controller superuser access. A bootstrap user is not in the replicated
    /// state, so nothing there can revoke it.
    pub fn authority(
        &self,
        model_uuid: &str,
        needed: Access,
        superuser: bool,
        what: &str,
    ) -> Authority {
        let kind = if self.bootstrap {
            authority::Kind::Bootstrap
        } else {
            authority::Kind::User
        };
        Authority {
            kind: kind as i32,
            model_uuid: model_uuid.to_owned(),
            model_access: needed as i32,
            superuser,
            what: what.to_owned(),
            machine_id: String::new(),
        }
    }
}

/// Checks callers' bearer tokens against the bootstrap users (`auth.yaml`) and the users added
/// since, which live in the replicated state.
#[derive(Clone, Debug)]
pub struct Authenticator {
    users: AuthFile,
    state: Option<StateView>,
}

impl Authenticator {
    /// An authenticator for the bootstrap `users` and, when given, the replicated users in `state`.
    pub fn new(users: AuthFile, state: Option<StateView>) -> Self {
        Self { users, state }
    }

    /// The caller of `request` if it is a superuser; `PermissionDenied` naming `what` otherwise.
    pub fn authenticate_superuser<T>(
        &self,
        request: &Request<T>,
        what: &str,
    ) -> Result<Caller, Status> {
        let caller = self.authenticate(request)?;
        if caller.access != SUPERUSER {
            return Err(Status::permission_denied(format!(
                "user {:?} may not {what} (superuser access needed)",
                caller.user
            )));
        }
        Ok(caller)
    }

    /// Whether `name` is one of the bootstrap users.
    pub fn is_bootstrap_user(&self, name: &str) -> bool {
        self.users.users.iter().any(|u| u.name == name)
    }

    /// The caller of `request`, or `Unauthenticated` saying what was wrong.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let header = match request.metadata().get("authorization") {
            Some(value) => Some(value.to_str().map_err(|_| {
                Status::unauthenticated("malformed authorization header: expected `Bearer <token>`")
            })?),
            None => None,
        };
        self.authenticate_header(header)
    }

    /// The caller sending `header` (the value of an `authorization` header, gRPC metadata or
    /// HTTP), or `Unauthenticated` saying what was wrong.
    pub fn authenticate_header(&self, header: Option<&str>) -> Result<Caller, Status> {
        let header = header.ok_or_else(|| {
            Status::unauthenticated("no credentials: send `authorization: Bearer <token>`")
        })?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            Status::unauthenticated("malformed authorization header: expected `Bearer <token>`")
        })?;
        let hash = hash_token(token.trim());
        if let Some(user) = self
            .users
            .users
            .iter()
            .find(|u| constant_time_eq(u.token_sha256.as_bytes(), hash.as_bytes()))
        {
            return Ok(Caller {
                user: user.name.clone(),
                access: user.access.clone(),
                bootstrap: true,
            });
        }
        if let Some(state) = &self.state {
            let users = state
                .users()
                .map_err(|e| Status::internal(format!("cannot read users: {e}")))?;
            if let Some(user) = users
                .iter()
                .find(|u| constant_time_eq(u.token_sha256.as_bytes(), hash.as_bytes()))
            {
                return Ok(Caller {
                    user: user.name.clone(),
                    access: user.controller_access.clone(),
                    bootstrap: false,
                });
            }
        }
        Err(Status::unauthenticated("invalid token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::UserEntry;

    fn authenticator(token: &str) -> Authenticator {
        Authenticator::new(
            AuthFile {
                users: vec![UserEntry {
                    name: "admin".into(),
                    token_sha256: hash_token(token),
                    access: SUPERUSER.into(),
                }],
            },
            None,
        )
    }

    fn request(header: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(h) = header {
            request
                .metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        request
    }

    #[test]
    fn accepts_the_right_token_only() {
        let token = new_token();
        let auth = authenticator(&token);
        let caller = auth
            .authenticate(&request(Some(&format!("Bearer {token}"))))
            .unwrap();
        assert_eq!(caller.user, "admin");
        for bad in [
            None,
            Some("Bearer nope"),
            Some(token.as_str()),
            Some("Basic x"),
        ] {
            let status = auth.authenticate(&request(bad)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }
}
