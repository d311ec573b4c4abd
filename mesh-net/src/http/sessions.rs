//! `/v1/session`: create, destroy, renew, info, node, list, with Consul's
//! bodies and status codes (see `mesh_core::session_api`).

use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use mesh_core::session_api::{decode_create, CreateError, SessionJson};
use mesh_core::state::{CommandResult, SessionCommand};
use mesh_core::wire::{QueryResult, SessionQuery};
use serde_json::json;

use super::reply::{
    bad_request, json_reply, method_not_allowed, not_found, read_json, rpc_error, text,
    with_read_headers, Reply,
};
use super::routes::{segment, Call, HttpApi};

impl HttpApi {
    pub(super) async fn sessions(&self, call: Call, rest: &str) -> Reply {
        let (verb, arg) = rest.split_once('/').unwrap_or((rest, ""));
        let arg = match segment(arg) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let (need, missing) = match verb {
            "create" | "list" => (None, ""),
            "destroy" | "renew" | "info" => (Some(()), "Missing session"),
            "node" => (Some(()), "Missing node name"),
            _ => return not_found(format!("unknown endpoint /v1/session/{rest}")),
        };
        if need.is_some() && arg.is_empty() {
            return bad_request(missing);
        }
        let method_ok = match verb {
            "create" | "destroy" | "renew" => call.method == Method::PUT,
            _ => call.method == Method::GET,
        };
        if !method_ok {
            return method_not_allowed();
        }
        match verb {
            "create" => self.session_create(call).await,
            "destroy" => self.session_destroy(arg).await,
            "renew" => self.session_renew(arg).await,
            "info" => self.session_read(&call, SessionQuery::Info(arg)).await,
            "node" => self.session_read(&call, SessionQuery::Node(arg)).await,
            _ => self.session_read(&call, SessionQuery::List).await,
        }
    }

    async fn session_create(&self, call: Call) -> Reply {
        let body = match read_json(call.req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let id = mesh_core::api::uuid_v4(rand::random());
        let session = match decode_create(&body, &self.config.node_name, &id) {
            Ok(s) => s,
            Err(CreateError::Decode(m)) => return bad_request(m),
            Err(CreateError::Invalid(m)) => return text(StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        match self
            .cluster
            .write(SessionCommand::Create(Box::new(session)).into())
            .await
        {
            Ok((index, CommandResult::Bool(true))) => {
                let mut resp = json_reply(&json!({ "ID": id }));
                resp.headers_mut()
                    .insert("X-Consul-Index", HeaderValue::from(index));
                resp
            }
            // Consul answers a session the catalog refuses with 500 and
            // its reason ("Missing node registration").
            Ok((_, CommandResult::Failed(m))) => text(StatusCode::INTERNAL_SERVER_ERROR, m),
            Ok((_, other)) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("a session create was answered with {other:?}"),
            ),
            Err(e) => rpc_error(e),
        }
    }

    async fn session_destroy(&self, id: String) -> Reply {
        self.write_bool(SessionCommand::Destroy { id }.into()).await
    }

    async fn session_renew(&self, id: String) -> Reply {
        match self.cluster.renew_session(id.clone()).await {
            Ok(Some(s)) => json_reply(&[SessionJson::from(&s)]),
            Ok(None) => not_found(format!("Session id '{id}' not found")),
            Err(e) => rpc_error(e),
        }
    }

    async fn session_read(&self, call: &Call, q: SessionQuery) -> Reply {
        let resp = match self.read(&call.query, q).await {
            Ok(r) => r,
            Err(r) => return r,
        };
        let QueryResult::Sessions(sessions) = &resp.result else {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("a session read was answered with {:?}", resp.result),
            );
        };
        let body: Vec<SessionJson> = sessions.iter().map(SessionJson::from).collect();
        with_read_headers(json_reply(&body), &resp)
    }
}
