//! The checks made when the engine starts: every primary keeps an AOF it
//! fsyncs on every write (or the operator said it need not), and carries
//! the current function library.

use super::reply::{self, store_error};
use super::LIBRARY;
use crate::store::StoreError;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::Value;

/// `CONFIG GET name` on every primary: (node, value) pairs.
async fn config_everywhere(
    conn: &mut ClusterConnection,
    name: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("GET").arg(name);
    let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let v = conn
        .route_command(cmd, all)
        .await
        .map_err(|e| store_error("CONFIG GET", &e))?;
    let Value::Map(per_node) = v else {
        return Err(StoreError::Corrupt(
            "redis: CONFIG GET did not answer per node",
        ));
    };
    let mut out = Vec::new();
    for (node, answer) in per_node {
        let node = reply::bytes(node)?.unwrap_or_default();
        let node = String::from_utf8_lossy(&node).into_owned();
        let value = match reply::check("CONFIG GET", answer)? {
            Value::Map(kv) => kv.into_iter().next().map(|(_, v)| v),
            other => reply::array(other)?.into_iter().nth(1),
        };
        let value = value
            .map(reply::bytes)
            .transpose()?
            .flatten()
            .unwrap_or_default();
        out.push((node, String::from_utf8_lossy(&value).into_owned()));
    }
    Ok(out)
}

/// The primaries that would lose an acknowledged write if they crashed:
/// not `appendonly yes` with `appendfsync always`.
pub async fn unsafe_primaries(conn: &mut ClusterConnection) -> Result<Vec<String>, StoreError> {
    let mut bad = Vec::new();
    for (setting, wanted) in [("appendonly", "yes"), ("appendfsync", "always")] {
        for (node, value) in config_everywhere(conn, setting).await? {
            if !value.eq_ignore_ascii_case(wanted) {
                bad.push(format!("{node}: {setting} is {value:?}, not {wanted}"));
            }
        }
    }
    Ok(bad)
}

/// Load (or replace) the function library on every primary. Redis keeps
/// functions with the data: replicas and restarts have them too.
pub async fn load_library(conn: &mut ClusterConnection) -> Result<(), StoreError> {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(LIBRARY);
    let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let v = conn
        .route_command(cmd, all)
        .await
        .map_err(|e| store_error("FUNCTION LOAD", &e))?;
    if let Value::Map(per_node) = v {
        for (_, answer) in per_node {
            reply::check("FUNCTION LOAD", answer)?;
        }
    }
    Ok(())
}
