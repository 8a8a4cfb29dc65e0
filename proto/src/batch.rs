//! The one check of a `Batch` request, for the control service and the dataplane:
//! only remote and Service changes, and every delete names what exists at that point
//! of the batch. Only the names the batch touches are looked at, so checking a
//! one-change batch against 10 000 Services is a pass over their names, not an
//! index of them.
use std::collections::HashSet;

use crate::{ErrorKind, ErrorReply, Request};

fn fail(kind: ErrorKind, message: String) -> ErrorReply {
    ErrorReply { kind, message }
}

/// The name a batch entry touches, and whether it is a remote (else a Service).
fn touched(r: &Request) -> Option<(&str, bool)> {
    match r {
        Request::RemoteAdd(x) => Some((&x.name, true)),
        Request::RemoteDel { name } => Some((name, true)),
        Request::ServiceSet(x) => Some((&x.name, false)),
        Request::ServiceDel { name } => Some((name, false)),
        _ => None,
    }
}

/// Checks `reqs` against the remotes and Services that exist now (their names).
pub fn check<'a>(
    reqs: &'a [Request],
    remotes: impl Iterator<Item = &'a str>,
    services: impl Iterator<Item = &'a str>,
) -> Result<(), ErrorReply> {
    if let Some(other) = reqs.iter().find(|r| touched(r).is_none()) {
        return Err(fail(
            ErrorKind::BadRequest,
            format!("a batch holds remote and service changes only, not {other:?}"),
        ));
    }
    let wanted_r: HashSet<&str> = reqs
        .iter()
        .filter_map(touched)
        .filter(|t| t.1)
        .map(|t| t.0)
        .collect();
    let wanted_s: HashSet<&str> = reqs
        .iter()
        .filter_map(touched)
        .filter(|t| !t.1)
        .map(|t| t.0)
        .collect();
    let mut have_r: HashSet<&str> = remotes.filter(|n| wanted_r.contains(n)).collect();
    let mut have_s: HashSet<&str> = services.filter(|n| wanted_s.contains(n)).collect();
    for r in reqs {
        match r {
            Request::RemoteAdd(x) => {
                have_r.insert(&x.name);
            }
            Request::ServiceSet(x) => {
                have_s.insert(&x.name);
            }
            Request::RemoteDel { name } if !have_r.remove(name.as_str()) => {
                return Err(fail(
                    ErrorKind::NotFound,
                    format!("batch: no remote node {name:?}"),
                ))
            }
            Request::ServiceDel { name } if !have_s.remove(name.as_str()) => {
                return Err(fail(
                    ErrorKind::NotFound,
                    format!("batch: no service {name:?}"),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_must_name_what_exists_as_the_batch_goes() {
        let none = std::iter::empty::<&str>;
        let del = |n: &str| Request::ServiceDel { name: n.into() };
        let set = |n: &str| {
            Request::ServiceSet(crate::ServiceSpec::new(n, "10.96.0.1", 80, "tcp", vec![]))
        };
        assert!(check(&[del("a")], none(), ["a", "b"].into_iter()).is_ok());
        assert_eq!(
            check(&[del("c")], none(), ["a"].into_iter())
                .unwrap_err()
                .kind,
            ErrorKind::NotFound
        );
        assert!(
            check(&[set("c"), del("c")], none(), none()).is_ok(),
            "made earlier in the batch"
        );
        assert!(
            check(&[del("a"), del("a")], none(), ["a"].into_iter()).is_err(),
            "deleted twice"
        );
        let remote = Request::RemoteDel { name: "a".into() };
        assert!(
            check(&[remote], none(), ["a"].into_iter()).is_err(),
            "a Service is no remote"
        );
        assert_eq!(
            check(&[Request::Ping], none(), none()).unwrap_err().kind,
            ErrorKind::BadRequest
        );
    }
}
