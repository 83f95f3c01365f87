//! A stub of the one Auto Scaling API call moto 5.2 lacks, `CompleteLifecycleAction` (AWS
//! Query protocol: a form-encoded POST, an XML answer). It completes the action of a known
//! hook and instance once and records it; an unknown hook, or an action already completed, is
//! a `ValidationError` as Auto Scaling answers it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

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
    stop: Arc<AtomicBool>,
}

impl AutoScalingStub {
    /// Knows `hook` of `group` (any instance, once each).
    pub fn start(group: &str, hook: &str) -> AutoScalingStub {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the Auto Scaling stub");
        let port = l.local_addr().expect("addr").port();
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(Mutex::new(Vec::new()));
        let (s, done, group, hook) = (
            stop.clone(),
            completed.clone(),
            group.to_string(),
            hook.to_string(),
        );
        thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        serve(c, &group, &hook, &done);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        AutoScalingStub {
            port,
            completed,
            stop,
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

impl Drop for AutoScalingStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
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

fn serve(c: TcpStream, group: &str, hook: &str, done: &Mutex<Vec<Completed>>) {
    let mut r = BufReader::new(match c.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut w = c;
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length.min(64 * 1024)];
    let _ = r.read_exact(&mut body);
    let form: Vec<(String, String)> = String::from_utf8_lossy(&body)
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
    let _ = write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
        xml.len()
    );
    let _ = w.flush();
}
