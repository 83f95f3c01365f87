//! The Auto Scaling lifecycle on AWS: a node whose group starts terminating it (scale-in, a
//! replaced instance, an AZ rebalance) learns it from the instance metadata
//! (`autoscaling/target-lifecycle-state` becomes `Terminated` while the group's
//! `EC2_INSTANCE_TERMINATING` hook holds the instance), hands over exactly as on SIGTERM
//! (a primary switches over to the healthiest replica, then PostgreSQL stops cleanly), and
//! then completes the lifecycle action so that the group goes on at once instead of waiting
//! for the hook's heartbeat timeout.
//!
//! The metadata is read over IMDSv2 only (a token first, never a tokenless request) with the
//! daemon's one HTTP client; the Auto Scaling call is made by `spiloctl aws
//! complete-lifecycle-action`, so the AWS SDK never maps into the daemon.

use std::time::Duration;

use hyper::header::HeaderName;
use hyper::Method;
use tokio::time::Instant;

use crate::config::aws::AwsConfig;
use crate::config::Config;

/// The lifecycle state that means "hand over now".
pub const TERMINATED: &str = "Terminated";
/// Where the lifecycle state is, under `latest/meta-data/`.
pub const STATE_PATH: &str = "autoscaling/target-lifecycle-state";
/// The longest one metadata request may take.
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
/// A token's life (the most IMDS hands out: 6 hours); renewed a minute before it ends.
const TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// The longest `spiloctl aws complete-lifecycle-action` may take.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(40);

/// Why the metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The request failed (no answer, refused, timed out).
    #[error("instance metadata {path}: {source}")]
    Request {
        /// What was asked.
        path: String,
        /// The client's error.
        #[source]
        source: crate::api::client::ClientError,
    },
    /// An answer that is not what the item holds.
    #[error("instance metadata {path}: {what}")]
    Invalid {
        /// What was asked.
        path: String,
        /// What is wrong with the answer.
        what: String,
    },
    /// An answer other than 200.
    #[error("instance metadata {path}: HTTP {status}")]
    Status {
        /// What was asked.
        path: String,
        /// The status.
        status: u16,
    },
}

/// An IMDSv2 client: a session token, then reads with it.
pub struct Imds {
    endpoint: String,
    token: Option<(String, Instant)>,
}

impl Imds {
    /// A client of `endpoint` (`http://169.254.169.254` on EC2).
    pub fn new(endpoint: &str) -> Imds {
        Imds {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: None,
        }
    }

    async fn token(&mut self) -> Result<String, ImdsError> {
        if let Some((t, until)) = &self.token {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let path = "latest/api/token".to_string();
        let url = format!("{}/{path}", self.endpoint);
        let headers = [(
            HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds"),
            TOKEN_TTL.as_secs().to_string(),
        )];
        let (status, body) =
            crate::api::client::exchange(Method::PUT, &url, &headers, Vec::new(), IMDS_TIMEOUT)
                .await
                .map_err(|source| ImdsError::Request {
                    path: path.clone(),
                    source,
                })?;
        if status != 200 {
            return Err(ImdsError::Status { path, status });
        }
        let t = String::from_utf8_lossy(&body).trim().to_string();
        self.token = Some((
            t.clone(),
            Instant::now() + TOKEN_TTL - Duration::from_secs(60),
        ));
        Ok(t)
    }

    /// `GET latest/meta-data/<item>`: Some(text) on 200, None on 404 (no such item: an
    /// instance outside any group has no lifecycle state).
    pub async fn get(&mut self, item: &str) -> Result<Option<String>, ImdsError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let path = format!("latest/meta-data/{item}");
            let url = format!("{}/{path}", self.endpoint);
            let headers = [(HeaderName::from_static("x-aws-ec2-metadata-token"), token)];
            let (status, body) =
                crate::api::client::exchange(Method::GET, &url, &headers, Vec::new(), IMDS_TIMEOUT)
                    .await
                    .map_err(|source| ImdsError::Request {
                        path: path.clone(),
                        source,
                    })?;
            match status {
                200 => {
                    // A metadata item is short; a long answer is not one.
                    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
                    return Ok(Some(text.trim().to_string()));
                }
                404 => return Ok(None),
                // The token expired or the service restarted: one new token, once.
                401 if attempt == 0 => self.token = None,
                _ => return Err(ImdsError::Status { path, status }),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// What the daemon watches, from the `aws:` section (None: no `lifecycle_hook`, nothing
/// watched).
#[derive(Clone, Debug)]
pub struct Watch {
    /// The IMDS endpoint.
    pub imds: String,
    /// The hook to complete.
    pub hook: String,
    /// The group.
    pub group: String,
    /// The region (None: the instance's, from the metadata).
    pub region: Option<String>,
    /// A custom Auto Scaling endpoint.
    pub endpoint: Option<String>,
    /// Between two reads of the lifecycle state.
    pub poll: Duration,
    /// Static credentials (access key id, secret), else the chain's.
    pub credentials: Option<(String, String)>,
}

impl Watch {
    /// The watch the configuration asks for.
    pub fn from_config(cfg: &Config) -> Option<Watch> {
        let a: &AwsConfig = cfg.aws.as_ref()?;
        let hook = a.lifecycle_hook.clone()?;
        Some(Watch {
            imds: a.imds().to_string(),
            hook,
            group: a
                .auto_scaling_group
                .clone()
                .unwrap_or_else(|| cfg.scope.clone()),
            region: a.region.clone(),
            endpoint: a.autoscaling_endpoint.clone(),
            poll: a.poll(),
            credentials: a.access_key_id.clone().zip(a.secret_access_key.clone()),
        })
    }

    /// Resolves once the group is terminating this instance; the instance id then.
    pub async fn terminating(&self) -> String {
        let mut imds = Imds::new(&self.imds);
        let mut failing = false;
        let mut id: Option<String> = None;
        let mut described = false;
        loop {
            if !described {
                if let Ok(Some(instance)) = read_instance_id(&mut imds).await {
                    let az = imds
                        .get("placement/availability-zone")
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| "an unknown zone".into());
                    tracing::info!(
                        "on EC2 instance {instance} in {az}: watching the lifecycle hook {} of the \
                         Auto Scaling Group {} every {} s",
                        self.hook,
                        self.group,
                        self.poll.as_secs()
                    );
                    described = true;
                    id = Some(instance);
                }
            }
            match read_state(&mut imds, &mut id).await {
                Ok(Some((state, instance))) if state == TERMINATED => {
                    tracing::warn!(
                        "the Auto Scaling Group {} is terminating this instance ({instance}): \
                         handing over before it goes",
                        self.group
                    );
                    return instance;
                }
                Ok(_) => {
                    if failing {
                        tracing::info!("the instance metadata answers again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            "cannot read the Auto Scaling lifecycle state: {} (retrying every {} s)",
                            crate::error_chain(&e),
                            self.poll.as_secs()
                        );
                        failing = true;
                    }
                }
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Completes the lifecycle action (after the hand-over), through `spiloctl`.
    pub async fn complete(&self, instance_id: &str) -> Result<(), CompleteError> {
        let region = match &self.region {
            Some(r) => Some(r.clone()),
            None => Imds::new(&self.imds).get("placement/region").await?,
        };
        let mut args = vec![
            "aws",
            "complete-lifecycle-action",
            "--group",
            &self.group,
            "--hook",
            &self.hook,
            "--instance-id",
            instance_id,
            "--result",
            "CONTINUE",
            "--timeout",
            "30",
        ];
        if let Some(r) = &region {
            args.extend(["--region", r]);
        }
        if let Some(e) = &self.endpoint {
            args.extend(["--endpoint", e]);
        }
        // The instance role comes from the same metadata service the lifecycle state does;
        // static credentials go in the environment (never in arguments, which `ps` shows).
        let mut env = vec![("AWS_EC2_METADATA_SERVICE_ENDPOINT", self.imds.as_str())];
        if let Some((id, secret)) = &self.credentials {
            env.extend([
                ("AWS_ACCESS_KEY_ID", id.as_str()),
                ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
            ]);
        }
        crate::secret::run_helper(&args, b"", &env, COMPLETE_TIMEOUT).await?;
        Ok(())
    }
}

/// Why the lifecycle action could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    /// The region (not configured) could not be read from the instance metadata.
    #[error("the region from the instance metadata: {0}")]
    Region(#[from] ImdsError),
    /// `spiloctl aws complete-lifecycle-action` failed.
    #[error(transparent)]
    Helper(#[from] crate::secret::HelperError),
}

/// This instance's id, checked (None: the service has none).
async fn read_instance_id(imds: &mut Imds) -> Result<Option<String>, ImdsError> {
    match imds.get("instance-id").await? {
        Some(i) if crate::config::lb::instance_id_ok(&i) => Ok(Some(i)),
        Some(i) => Err(ImdsError::Invalid {
            path: "latest/meta-data/instance-id".into(),
            what: format!(
                "{:?} is not an EC2 instance id",
                i.chars().take(40).collect::<String>()
            ),
        }),
        None => Ok(None),
    }
}

/// The lifecycle state and the instance id (None: this instance is in no group).
async fn read_state(
    imds: &mut Imds,
    id: &mut Option<String>,
) -> Result<Option<(String, String)>, ImdsError> {
    let Some(state) = imds.get(STATE_PATH).await? else {
        return Ok(None);
    };
    if id.is_none() {
        *id = read_instance_id(imds).await?;
    }
    Ok(id.clone().map(|i| (state, i)))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A metadata stub: a token, then `state` for the lifecycle path and an instance id;
    /// counts tokenless requests.
    async fn stub(
        states: Vec<&'static str>,
    ) -> (
        String,
        tokio::task::JoinHandle<()>,
        std::sync::Arc<std::sync::atomic::AtomicU32>,
    ) {
        use std::sync::atomic::Ordering;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let tokenless = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = tokenless.clone();
        let h = tokio::spawn(async move {
            let mut states = states.into_iter();
            let mut state = states.next().unwrap_or("InService");
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    break;
                };
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let body = if req.starts_with("put /latest/api/token") {
                    "tok".to_string()
                } else if !req.contains("x-aws-ec2-metadata-token: tok") {
                    counter.fetch_add(1, Ordering::SeqCst);
                    String::new()
                } else if req.contains("target-lifecycle-state") {
                    let now = state;
                    state = states.next().unwrap_or(state);
                    now.to_string()
                } else if req.contains("instance-id") {
                    "i-0123456789abcdef0".to_string()
                } else {
                    String::new()
                };
                let status = if body.is_empty() {
                    "401 Unauthorized"
                } else {
                    "200 OK"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        (url, h, tokenless)
    }

    #[tokio::test]
    async fn the_watch_resolves_on_terminated_with_the_instance_id() {
        let (url, h, tokenless) = stub(vec!["InService", "InService", "Terminated"]).await;
        let w = Watch {
            imds: url,
            hook: "spilo-handover".into(),
            group: "orders".into(),
            region: Some("us-east-1".into()),
            endpoint: None,
            poll: Duration::from_millis(10),
            credentials: None,
        };
        let id = tokio::time::timeout(Duration::from_secs(10), w.terminating())
            .await
            .expect("resolves");
        assert_eq!(id, "i-0123456789abcdef0");
        assert_eq!(
            tokenless.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "IMDSv2 only"
        );
        h.abort();
    }

    #[tokio::test]
    async fn an_unreachable_service_is_an_error_naming_the_path() {
        let mut imds = Imds::new("http://127.0.0.1:9");
        let e = imds.get(STATE_PATH).await.expect_err("nothing on port 9");
        assert!(e.to_string().contains("latest/api/token"), "{e}");
    }
}
