//! `elb`: classic AWS Elastic Load Balancers that follow the primary, as a spilo
//! load-balancer plugin (`libspilo_lb_elb_plugin.so`; the daemon loads it only for a
//! `type: elb` entry of `load_balancers:`, so nodes without one never map the AWS SDK).
//!
//! - `set_primary(instance, term)`: the primary ELB holds exactly that instance (others are
//!   deregistered first, then it is registered); `set_primary(nobody, term)` takes *this*
//!   node's instance out (a leader stepping down never removes a newer leader's instance).
//! - `set_replicas(instances, term)`: the replica ELB, when configured, holds exactly those.
//! - Members are addressed by EC2 instance id (`describe` says `"addressing": "instance_id"`,
//!   and `"self"`: this node's id, from the settings or the instance metadata service, IMDSv2).
//! - Terms are kept in the ELB itself, in the tag `spilo:term` of the primary ELB, so that the
//!   fence holds across nodes: a call with an older term than the tag is refused; a newer one
//!   raises the tag before it changes anything and reads it back; `set_primary` registers its
//!   instance, reads the tag again, and only then deregisters the others (a newer leader that
//!   wrote in between wins: this node's registration is taken back and the call reports the
//!   stale term). The ELB API has no compare-and-set, so two leaders writing within the same
//!   few milliseconds can still interleave; the newer leader's next reconcile (one
//!   `loop_wait`) repairs the ELB, and a deposed primary has stopped taking writes by then (its
//!   lease guard fences it before its lease can expire anywhere).
//! - Registering an instance already registered is skipped (some API servers would list it
//!   twice); an instance id the EC2 side does not know is the API's business, not spilo's.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_elasticloadbalancing as elb;
use elb::config::http::HttpResponse;
use elb::config::retry::RetryConfig;
use elb::config::timeout::TimeoutConfig;
use elb::config::Region;
use elb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use serde_json::{json, Value};
use spilo_sdk::plugin::runtime::PluginRuntime;
use spilo_sdk::plugin::{LbPlugin, PluginError};
use spilo_sdk::{StaleTerm, Term};

/// The tag of the primary ELB that holds the newest leader term.
pub const TERM_TAG: &str = "spilo:term";
/// The instance metadata service's usual address.
pub const DEFAULT_IMDS: &str = "http://169.254.169.254";
/// How long `create` may take (metadata, region, the probe of the ELBs).
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `create` probes the ELBs (both together): an API that does not answer in time is
/// no reason to stop the start.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The region used with a custom endpoint when none is configured anywhere.
const ENDPOINT_DEFAULT_REGION: &str = "us-east-1";

/// The plugin's settings (the `load_balancers:` entry minus spilo's own keys).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The ELB for read-write traffic.
    pub primary_elb: String,
    /// The ELB for read-only traffic.
    pub replica_elb: Option<String>,
    /// This node's instance id (else from the metadata service).
    pub instance_id: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// A custom API endpoint.
    pub endpoint: Option<String>,
    /// The instance metadata service.
    pub imds_endpoint: String,
    /// Static credentials (key id, secret, session token); else the AWS chain (environment,
    /// profile, instance role).
    pub credentials: Option<(String, String, Option<String>)>,
}

/// Settings the plugin refuses; the message names the key.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SettingsError {
    /// The settings are not an object.
    #[error("elb settings: not a JSON object: {0}")]
    NotAnObject(Value),
    /// A key that is not a non-empty string.
    #[error("elb settings: {key}: {value} is not a non-empty string")]
    NotText {
        /// The key.
        key: &'static str,
        /// Its value.
        value: Value,
    },
    /// No `primary_elb`.
    #[error("elb settings: primary_elb: required")]
    NoPrimaryElb,
    /// One of the access key's two parts (or a session token alone).
    #[error(
        "elb settings: access_key_id and secret_access_key: give both or neither (session_token only with them)"
    )]
    HalfCredentials,
}

/// Why this node's instance id could not be read from the metadata service.
#[derive(Debug, thiserror::Error)]
enum ImdsError {
    #[error("imds_endpoint: '{endpoint}': {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "instance_id: not set, and the instance metadata service at {endpoint} did not give one: {}",
        DisplayErrorContext(source)
    )]
    NoAnswer {
        endpoint: String,
        #[source]
        source: Box<aws_config::imds::client::error::ImdsError>,
    },
    #[error("the instance metadata service at {endpoint} answered '{id}', not an EC2 instance id")]
    NotAnInstanceId { endpoint: String, id: String },
}

impl Settings {
    /// Reads the settings; the error names the key.
    pub fn from_json(v: &Value) -> Result<Settings, SettingsError> {
        let obj = v
            .as_object()
            .ok_or_else(|| SettingsError::NotAnObject(v.clone()))?;
        let text = |key: &'static str| -> Result<Option<String>, SettingsError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
                Some(other) => Err(SettingsError::NotText {
                    key,
                    value: other.clone(),
                }),
            }
        };
        let primary_elb = text("primary_elb")?.ok_or(SettingsError::NoPrimaryElb)?;
        let credentials = match (text("access_key_id")?, text("secret_access_key")?) {
            (Some(k), Some(s)) => Some((k, s, text("session_token")?)),
            (None, None) if text("session_token")?.is_none() => None,
            _ => return Err(SettingsError::HalfCredentials),
        };
        Ok(Settings {
            credentials,
            primary_elb,
            replica_elb: text("replica_elb")?,
            instance_id: text("instance_id")?,
            region: text("region")?,
            endpoint: text("endpoint")?,
            imds_endpoint: text("imds_endpoint")?.unwrap_or_else(|| DEFAULT_IMDS.to_string()),
        })
    }
}

/// The plugin: an ELB client on a runtime of its own.
pub struct ElbPlugin {
    // Dropped first: the runtime shuts down before the client goes.
    rt: PluginRuntime,
    client: elb::Client,
    settings: Settings,
    me: String,
    /// Changes of this process one at a time.
    changing: Mutex<()>,
}

/// An SDK error as a plugin error that keeps what AWS said (its error code and message).
fn aws_error<E>(op: &str, elb_name: &str, e: SdkError<E, HttpResponse>) -> PluginError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("no error code");
            let message = se.err().message().unwrap_or("no message");
            let text = format!("{op} on ELB {elb_name}: {code}: {message} (HTTP {status})");
            // Throttling and server errors pass; anything else AWS refused (an unknown ELB,
            // credentials or permissions it rejects) is a refusal.
            let passing = status >= 500
                || status == 429
                || code.contains("Throttl")
                || code == "RequestLimitExceeded";
            if passing {
                PluginError::unavailable(text)
            } else {
                PluginError::refused(text)
            }
        }
        SdkError::TimeoutError(_) => PluginError::timeout(format!(
            "{op} on ELB {elb_name}: the AWS API did not answer in time"
        )),
        SdkError::DispatchFailure(d) if d.is_timeout() => PluginError::timeout(format!(
            "{op} on ELB {elb_name}: the AWS API did not answer in time"
        )),
        SdkError::DispatchFailure(_) => PluginError::unavailable(format!(
            "{op} on ELB {elb_name}: the AWS API cannot be reached: {}",
            DisplayErrorContext(&e)
        )),
        _ => PluginError::refused(format!(
            "{op} on ELB {elb_name}: {}",
            DisplayErrorContext(&e)
        )),
    }
}

fn stale(offered: Term, highest: u64) -> PluginError {
    PluginError::stale_term(StaleTerm {
        offered,
        highest: Term(highest),
    })
}

impl ElbPlugin {
    /// Runs `f` on the runtime until `deadline`.
    fn call<T>(
        &self,
        deadline: Instant,
        f: impl Future<Output = Result<T, PluginError>>,
    ) -> Result<T, PluginError> {
        self.rt.call(deadline, f)
    }

    /// The instances registered with `name`, sorted, without repeats.
    async fn instances(&self, name: &str) -> Result<BTreeSet<String>, PluginError> {
        let mut all = self.instances_of(&[name]).await?;
        Ok(all.pop().unwrap_or_default())
    }

    /// The instances registered with each of `names`, in one DescribeLoadBalancers call.
    async fn instances_of(&self, names: &[&str]) -> Result<Vec<BTreeSet<String>>, PluginError> {
        let joined = names.join(", ");
        let out = self
            .client
            .describe_load_balancers()
            .set_load_balancer_names(Some(names.iter().map(|n| n.to_string()).collect()))
            .send()
            .await
            .map_err(|e| aws_error("DescribeLoadBalancers", &joined, e))?;
        names
            .iter()
            .map(|name| {
                let lb = out
                    .load_balancer_descriptions()
                    .iter()
                    .find(|d| d.load_balancer_name() == Some(*name))
                    .ok_or_else(|| {
                        PluginError::refused(format!(
                            "DescribeLoadBalancers on ELB {name}: the answer does not describe it"
                        ))
                    })?;
                Ok(lb
                    .instances()
                    .iter()
                    .filter_map(|i| i.instance_id().map(str::to_string))
                    .collect())
            })
            .collect()
    }

    /// The term in the primary ELB's tag (0: none).
    async fn tag_term(&self) -> Result<u64, PluginError> {
        let name = &self.settings.primary_elb;
        let out = self
            .client
            .describe_tags()
            .load_balancer_names(name)
            .send()
            .await
            .map_err(|e| aws_error("DescribeTags", name, e))?;
        let value = out
            .tag_descriptions()
            .iter()
            .filter(|d| d.load_balancer_name() == Some(name.as_str()))
            .flat_map(|d| d.tags())
            .find(|t| t.key() == TERM_TAG)
            .and_then(|t| t.value().map(str::to_string));
        match value {
            None => Ok(0),
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                PluginError::refused(format!(
                    "ELB {name}: tag {TERM_TAG} holds '{v}', not a term (a whole number): remove or mend the tag"
                ))
            }),
        }
    }

    /// Refuses a term older than the tag's; raises the tag to a newer one.
    async fn admit(&self, term: Term) -> Result<(), PluginError> {
        let held = self.tag_term().await?;
        if term.0 < held {
            return Err(stale(term, held));
        }
        if term.0 > held {
            let name = &self.settings.primary_elb;
            let tag = elb::types::Tag::builder()
                .key(TERM_TAG)
                .value(term.0.to_string())
                .build()
                .map_err(|e| PluginError::refused(format!("building the term tag: {e}")))?;
            self.client
                .add_tags()
                .load_balancer_names(name)
                .tags(tag)
                .send()
                .await
                .map_err(|e| aws_error("AddTags", name, e))?;
            // AddTags is no compare-and-set: a newer leader may have written in between.
            let now = self.tag_term().await?;
            if now > term.0 {
                return Err(stale(term, now));
            }
        }
        Ok(())
    }

    /// Makes `name` hold exactly `want`: those that should not be there are deregistered
    /// first, then the missing ones registered (an instance already there is not registered
    /// again).
    async fn converge(&self, name: &str, want: &BTreeSet<String>) -> Result<(), PluginError> {
        let have = self.instances(name).await?;
        self.change(name, false, have.difference(want)).await?;
        self.change(name, true, want.difference(&have)).await
    }

    /// Takes `id` out of `name` if it is there.
    async fn deregister(&self, name: &str, id: &str) -> Result<(), PluginError> {
        let have = self.instances(name).await?;
        self.change(name, false, have.get(id)).await
    }

    /// Registers (or deregisters) `ids` with `name` in one call; nothing to do, no call.
    async fn change<'a>(
        &self,
        name: &str,
        register: bool,
        ids: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), PluginError> {
        let instances: Vec<elb::types::Instance> = ids
            .into_iter()
            .map(|id| {
                elb::types::Instance::builder()
                    .instance_id(id.as_str())
                    .build()
            })
            .collect();
        if instances.is_empty() {
            return Ok(());
        }
        if register {
            self.client
                .register_instances_with_load_balancer()
                .load_balancer_name(name)
                .set_instances(Some(instances))
                .send()
                .await
                .map_err(|e| aws_error("RegisterInstancesWithLoadBalancer", name, e))?;
        } else {
            self.client
                .deregister_instances_from_load_balancer()
                .load_balancer_name(name)
                .set_instances(Some(instances))
                .send()
                .await
                .map_err(|e| aws_error("DeregisterInstancesFromLoadBalancer", name, e))?;
        }
        Ok(())
    }
}

/// This node's instance id from the metadata service (IMDSv2: a session token first).
async fn instance_id_from_imds(endpoint: &str) -> Result<String, ImdsError> {
    let client = aws_config::imds::Client::builder()
        .endpoint(endpoint)
        .map_err(|source| ImdsError::Endpoint {
            endpoint: endpoint.to_string(),
            source,
        })?
        .max_attempts(2)
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(2))
        .build();
    let id = client
        .get("/latest/meta-data/instance-id")
        .await
        .map_err(|source| ImdsError::NoAnswer {
            endpoint: endpoint.to_string(),
            source: Box::new(source),
        })?;
    let id = id.as_ref().trim().to_string();
    if !spilo_sdk::lb::instance_id_ok(&id) {
        return Err(ImdsError::NotAnInstanceId {
            endpoint: endpoint.to_string(),
            id,
        });
    }
    Ok(id)
}

async fn build(settings: &Settings) -> Result<(elb::Client, String), PluginError> {
    let me = match &settings.instance_id {
        Some(id) => id.clone(),
        None => instance_id_from_imds(&settings.imds_endpoint)
            .await
            .map_err(|e| PluginError::invalid(e.to_string()))?,
    };
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(12))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(2)
                .with_initial_backoff(Duration::from_millis(50)),
        );
    if let Some(r) = &settings.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some((key, secret, token)) = &settings.credentials {
        loader = loader.credentials_provider(elb::config::Credentials::new(
            key.clone(),
            secret.clone(),
            token.clone(),
            None,
            "spilo-elb-settings",
        ));
    }
    let sdk = loader.load().await;
    let mut b = elb::config::Builder::from(&sdk);
    if sdk.region().is_none() {
        if settings.endpoint.is_some() {
            b = b.region(Region::new(ENDPOINT_DEFAULT_REGION));
        } else {
            return Err(PluginError::invalid(
                "elb settings: region: not set, and none found in AWS_REGION, the AWS profile or the instance metadata",
            ));
        }
    }
    if let Some(e) = &settings.endpoint {
        b = b.endpoint_url(e.clone());
    }
    Ok((elb::Client::from_conf(b.build()), me))
}

impl LbPlugin for ElbPlugin {
    fn create(config: &Value) -> Result<Self, PluginError> {
        let settings =
            Settings::from_json(config).map_err(|e| PluginError::invalid(e.to_string()))?;
        let rt = PluginRuntime::new("spilo-elb", 1)?;
        let (client, me) = match rt.run_for(CREATE_TIMEOUT, build(&settings))? {
            Some(r) => r?,
            None => {
                return Err(PluginError::timeout(format!(
                    "setting up the ELB client took more than {CREATE_TIMEOUT:?}"
                )))
            }
        };
        let plugin = ElbPlugin {
            rt,
            client,
            settings,
            me,
            changing: Mutex::new(()),
        };
        // An unknown ELB name or credentials AWS refuses stop the start; an API that cannot be
        // reached does not (the daemon retries, and failover never waits for it).
        let names: Vec<String> = std::iter::once(plugin.settings.primary_elb.clone())
            .chain(plugin.settings.replica_elb.clone())
            .collect();
        let probe_deadline = Instant::now() + PROBE_TIMEOUT;
        for n in names {
            match plugin.call(probe_deadline, plugin.instances(&n)) {
                Ok(_) => {}
                Err(e) if e.status == spilo_sdk::abi::STATUS_REFUSED => {
                    return Err(PluginError::invalid(e.message))
                }
                Err(_) => {}
            }
        }
        Ok(plugin)
    }

    fn set_primary(
        &self,
        member: Option<&str>,
        term: Term,
        deadline: Instant,
    ) -> Result<(), PluginError> {
        let _one = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let name = self.settings.primary_elb.clone();
        self.call(deadline, async {
            self.admit(term).await?;
            match member {
                Some(id) => {
                    // Register first, check the term again, and only then take the others
                    // out: a newer leader that wrote its term meanwhile keeps its instance.
                    let have = self.instances(&name).await?;
                    let want: BTreeSet<String> = [id.to_string()].into();
                    self.change(&name, true, want.difference(&have)).await?;
                    let held = self.tag_term().await?;
                    if held > term.0 {
                        if id == self.me {
                            self.deregister(&name, id).await?;
                        }
                        return Err(stale(term, held));
                    }
                    self.converge(&name, &want).await
                }
                None => self.deregister(&name, &self.me).await,
            }
        })
    }

    fn set_replicas(
        &self,
        members: &[String],
        term: Term,
        deadline: Instant,
    ) -> Result<(), PluginError> {
        let Some(name) = self.settings.replica_elb.clone() else {
            return self.call(deadline, self.admit(term));
        };
        let _one = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        self.call(deadline, async {
            self.admit(term).await?;
            let want: BTreeSet<String> = members.iter().cloned().collect();
            self.converge(&name, &want).await
        })
    }

    fn describe(&self, deadline: Instant) -> Result<Value, PluginError> {
        self.call(deadline, async {
            // One DescribeLoadBalancers for both ELBs, one DescribeTags for the term.
            let (primary, replicas) = match &self.settings.replica_elb {
                Some(r) => {
                    let mut both = self
                        .instances_of(&[self.settings.primary_elb.as_str(), r.as_str()])
                        .await?;
                    let replicas = both.pop().unwrap_or_default();
                    (both.pop().unwrap_or_default(), replicas)
                }
                None => (
                    self.instances(&self.settings.primary_elb).await?,
                    BTreeSet::new(),
                ),
            };
            let term = self.tag_term().await?;
            Ok(json!({
                // Exactly one instance is a primary; none or several are not.
                "primary": (primary.len() == 1).then(|| primary.iter().next().cloned()).flatten(),
                "primary_instances": primary,
                "replicas": replicas,
                "term": (term > 0).then_some(term),
                "replicas_routed": self.settings.replica_elb.is_some(),
                "addressing": "instance_id",
                "self": self.me,
                "primary_elb": self.settings.primary_elb,
                "replica_elb": self.settings.replica_elb,
            }))
        })
    }
}

spilo_sdk::export_lb_plugin!(ElbPlugin, name = "elb", version = env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_the_bad_key() {
        let ok = Settings::from_json(&json!({"primary_elb": "a", "region": "eu-west-1"})).unwrap();
        assert_eq!(ok.primary_elb, "a");
        assert_eq!(ok.imds_endpoint, DEFAULT_IMDS);
        for (v, key) in [
            (json!({}), "primary_elb"),
            (json!({"primary_elb": 3}), "primary_elb"),
            (
                json!({"primary_elb": "a", "replica_elb": ""}),
                "replica_elb",
            ),
            (json!([1]), "not a JSON object"),
            (
                json!({"primary_elb": "a", "access_key_id": "AK"}),
                "secret_access_key",
            ),
        ] {
            let e = Settings::from_json(&v).unwrap_err().to_string();
            assert!(e.contains(key), "{v}: {e}");
        }
    }
}
