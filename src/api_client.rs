//! A small blocking client for the running server's API, used by the CLI and by
//! `fleet` (its node list). Its own module so neither imports the other.

use crate::config::Config;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach rollout at {base}: {message}; is `rollout serve` running, and is server.address reachable from here?")]
    Unreachable { base: String, message: String },
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from {url}: {message}")]
    Decode { url: String, message: String },
}

pub struct Client {
    pub base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(30))
                .build(),
        }
    }

    /// The server named by the config, and the credential every call sends
    /// (reads need one too): ROLLOUT_TOKEN (an operator's token from `rollout
    /// operator add`, whose role the server checks), else the admin token from
    /// the config or the state directory (readable by root only).
    pub fn from_config(config: &Config) -> Result<Client, ClientError> {
        let base = match (config.server.listen, config.server.address) {
            (Some(listen), _) if !listen.is_unspecified() => {
                format!("http://{listen}:{}", config.server.http_port)
            }
            _ => config.http_base_url(),
        };
        let token = std::env::var("ROLLOUT_TOKEN")
            .ok()
            .or_else(|| config.server.admin_token.clone())
            .or_else(|| std::fs::read_to_string(config.state_dir.join("admin.token")).ok())
            .map(|t| t.trim().to_string());
        Ok(Client::new(&base, token))
    }

    fn call(
        &self,
        req: ureq::Request,
        body: Option<serde_json::Value>,
    ) -> Result<ureq::Response, ClientError> {
        let req = match &self.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        };
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, r)) => {
                let text = r.into_string().unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(text);
                Err(ClientError::Api { status, message })
            }
            Err(e) => Err(ClientError::Unreachable {
                base: self.base.clone(),
                message: e.to_string(),
            }),
        }
    }

    fn decode<T: DeserializeOwned>(&self, url: &str, r: ureq::Response) -> Result<T, ClientError> {
        r.into_json().map_err(|e| ClientError::Decode {
            url: url.into(),
            message: e.to_string(),
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let r = self.call(self.agent.get(&url), None)?;
        self.decode(&url, r)
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let r = self.call(self.agent.post(&url), body.or(Some(serde_json::json!({}))))?;
        self.decode(&url, r)
    }

    /// A POST whose answer has no body (204).
    pub fn post_no_content(&self, path: &str, body: serde_json::Value) -> Result<(), ClientError> {
        let url = format!("{}{path}", self.base);
        self.call(self.agent.post(&url), Some(body)).map(|_| ())
    }

    pub fn delete(&self, path: &str) -> Result<(), ClientError> {
        let url = format!("{}{path}", self.base);
        self.call(self.agent.delete(&url), None).map(|_| ())
    }

    /// The raw SSE stream of `/api/v1/events`.
    pub fn events(&self) -> Result<Box<dyn std::io::Read + Send>, ClientError> {
        let url = format!("{}/api/v1/events", self.base);
        let agent = ureq::AgentBuilder::new()
            .timeout_read(std::time::Duration::from_secs(60))
            .build();
        let r = self.call(agent.get(&url), None)?;
        Ok(Box::new(r.into_reader()))
    }
}
