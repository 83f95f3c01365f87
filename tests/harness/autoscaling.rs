//! A stub of the one Auto Scaling API call moto 5.2 lacks, `CompleteLifecycleAction` (AWS
//! Query protocol: a form-encoded POST, an XML answer). It completes the action of a known
//! hook and instance once and records it; an unknown hook, or an action already completed, is
//! a `ValidationError` as Auto Scaling answers it.

use std::sync::{Arc, Mutex};

use crate::stub_http::{Answer, Request, StubServer};

/// One completed lifecycle action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    /// `AutoScalingGroupName`.
    pub group: String,
    /// `LifecycleHookName`.
    pub hook: String,
    /// `InstanceId`.
    pub instance_id: String,
    /// `LifecycleActionResult`.
    pub result: String,
}

/// The stub; stops serving on drop.
pub struct AutoScalingStub {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Actions completed, in order.
    pub completed: Arc<Mutex<Vec<Completed>>>,
    _server: StubServer,
}

impl AutoScalingStub {
    /// Knows `hook` of `group` (any instance, once each).
    pub fn start(group: &str, hook: &str) -> AutoScalingStub {
        let completed = Arc::new(Mutex::new(Vec::new()));
        let (done, group, hook) = (completed.clone(), group.to_string(), hook.to_string());
        let server = StubServer::start("Auto Scaling stub", move |req| {
            serve(&req, &group, &hook, &done)
        });
        AutoScalingStub {
            port: server.port,
            completed,
            _server: server,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The actions completed so far.
    pub fn completed(&self) -> Vec<Completed> {
        self.completed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(req: &Request, group: &str, hook: &str, done: &Mutex<Vec<Completed>>) -> Answer {
    let body = &req.body;
    let form: Vec<(String, String)> = String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let action = get("Action");
    let answer = if action != "CompleteLifecycleAction" {
        Err((
            "InvalidAction",
            format!("the stub knows CompleteLifecycleAction only, not {action:?}"),
        ))
    } else {
        let c = Completed {
            group: get("AutoScalingGroupName"),
            hook: get("LifecycleHookName"),
            instance_id: get("InstanceId"),
            result: get("LifecycleActionResult"),
        };
        let mut d = done.lock().unwrap_or_else(|p| p.into_inner());
        if c.group != group || c.hook != hook {
            Err((
                "ValidationError",
                format!(
                    "No Lifecycle Hook found named {} for group {}",
                    c.hook, c.group
                ),
            ))
        } else if d.iter().any(|x| x.instance_id == c.instance_id) {
            Err((
                "ValidationError",
                format!(
                    "No active Lifecycle Action found with instance ID {}",
                    c.instance_id
                ),
            ))
        } else {
            d.push(c);
            Ok(())
        }
    };
    let (status, xml) = match answer {
        Ok(()) => (
            "200 OK",
            "<CompleteLifecycleActionResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">\
             <CompleteLifecycleActionResult/>\
             <ResponseMetadata><RequestId>spilo-stub</RequestId></ResponseMetadata>\
             </CompleteLifecycleActionResponse>"
                .to_string(),
        ),
        Err((code, msg)) => (
            "400 Bad Request",
            format!(
                "<ErrorResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">\
                 <Error><Type>Sender</Type><Code>{code}</Code><Message>{msg}</Message></Error>\
                 <RequestId>spilo-stub</RequestId></ErrorResponse>"
            ),
        ),
    };
    Answer {
        status,
        content_type: "text/xml",
        headers: Vec::new(),
        body: xml,
    }
}
