//! One port of the proxy: accept, pick a target, connect, and forward bytes both ways until
//! either side closes or the target stops being one (then the client is cut at once, so no
//! client stays on a demoted primary).
//!
//! Bytes move with `splice(2)` through a pipe (zero-copy: they never enter user space); where
//! a pipe cannot be made the copy falls back to bounded buffers.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::routes::{ProxyRoutes, Target};
use super::stats::{ProxyStats, Side};

/// How one port behaves.
#[derive(Clone, Debug)]
pub struct PortSettings {
    /// Which side.
    pub side: Side,
    /// How long a new read-write connection waits for a primary.
    pub hold: Duration,
    /// How long to connect to PostgreSQL.
    pub connect_timeout: Duration,
    /// Connections at most.
    pub max_connections: usize,
}

/// Bytes moved per `splice` (a pipe's default capacity).
const CHUNK: usize = 64 * 1024;

/// Serves `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    settings: PortSettings,
    routes: watch::Receiver<Arc<ProxyRoutes>>,
    stats: Arc<ProxyStats>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(port = settings.side.as_str(), "proxy accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let port = stats.port(settings.side);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            port.refused.fetch_add(1, Relaxed);
            drop(client);
            continue;
        };
        port.accepted.fetch_add(1, Relaxed);
        let (settings, routes, stats, next) = (
            settings.clone(),
            routes.clone(),
            stats.clone(),
            next.clone(),
        );
        tokio::spawn(async move {
            let side = settings.side;
            stats.port(side).active.fetch_add(1, Relaxed);
            handle(client, &settings, routes, &stats, &next).await;
            stats.port(side).active.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
}

/// This side's target in `r`, if `t` still is one.
fn still_target(r: &ProxyRoutes, side: Side, t: &Target) -> bool {
    match side {
        Side::Rw => r.rw.as_ref() == Some(t),
        Side::Ro => r.ro.contains(t),
    }
}

/// Picks a target: the primary (waiting up to `hold` for one), or the next replica.
async fn pick(
    settings: &PortSettings,
    routes: &mut watch::Receiver<Arc<ProxyRoutes>>,
    next: &AtomicUsize,
) -> Option<Target> {
    match settings.side {
        Side::Rw => {
            let r = tokio::time::timeout(settings.hold, routes.wait_for(|r| r.rw.is_some()))
                .await
                .ok()?
                .ok()?;
            r.rw.clone()
        }
        Side::Ro => {
            let r = routes.borrow().clone();
            if r.ro.is_empty() {
                return None;
            }
            Some(r.ro[next.fetch_add(1, Relaxed) % r.ro.len()].clone())
        }
    }
}

async fn handle(
    client: TcpStream,
    settings: &PortSettings,
    mut routes: watch::Receiver<Arc<ProxyRoutes>>,
    stats: &ProxyStats,
    next: &AtomicUsize,
) {
    let port = stats.port(settings.side);
    let Some(target) = pick(settings, &mut routes, next).await else {
        port.unrouted.fetch_add(1, Relaxed);
        return;
    };
    let server = match tokio::time::timeout(
        settings.connect_timeout,
        TcpStream::connect(&target.addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(target = %target.member, "proxy connect failed: {e}");
            port.unrouted.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            port.unrouted.fetch_add(1, Relaxed);
            return;
        }
    };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
        keepalive(s);
    }
    // The route may have changed while connecting.
    if !still_target(&routes.borrow_and_update(), settings.side, &target) {
        port.cut.fetch_add(1, Relaxed);
        return;
    }
    let side = settings.side;
    let gone = async {
        loop {
            if routes.changed().await.is_err() {
                return; // the proxy is stopping
            }
            if !still_target(&routes.borrow_and_update(), side, &target) {
                return;
            }
        }
    };
    tokio::select! {
        _ = pump(&client, &server, &port.bytes_in, &port.bytes_out) => {}
        _ = gone => {
            port.cut.fetch_add(1, Relaxed);
        }
    }
    // Dropping both sockets closes them: a cut client sees its connection end at once.
}

/// Forwards both ways until both directions ended (or one failed).
async fn pump(a: &TcpStream, b: &TcpStream, up: &AtomicU64, down: &AtomicU64) {
    let _ = tokio::try_join!(one_way(a, b, up), one_way(b, a, down));
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded; each descriptor is new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors, no offsets; the kernel checks the descriptors.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// TCP keepalive (first probe after 60 s idle, then every 10 s, 3 unanswered end it): a peer
/// that vanished without closing does not hold a connection slot for ever.
fn keepalive(s: &TcpStream) {
    let fd = s.as_raw_fd();
    for (level, opt, val) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 60),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
    ] {
        let v: libc::c_int = val;
        // SAFETY: a live socket; the option value is a c_int of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn shutdown_write(s: &TcpStream) {
    // SAFETY: a live socket descriptor.
    unsafe {
        libc::shutdown(s.as_raw_fd(), libc::SHUT_WR);
    }
}

/// How bytes cross from one socket to the other: a chunk is filled from the source, then
/// drained into the destination (each call non-blocking: `WouldBlock` when the socket is not
/// ready).
trait Carrier {
    /// Takes up to a chunk from `from` (0: it ended).
    fn fill(&mut self, from: &TcpStream) -> io::Result<usize>;
    /// Gives bytes `done..n` of the chunk to `to`; how many it took.
    fn drain(&mut self, to: &TcpStream, done: usize, n: usize) -> io::Result<usize>;
}

/// Zero-copy: the chunk waits in a pipe between two `splice(2)` calls.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Carrier for Pipe {
    fn fill(&mut self, from: &TcpStream) -> io::Result<usize> {
        from.try_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), self.write.as_raw_fd(), CHUNK)
        })
    }

    fn drain(&mut self, to: &TcpStream, done: usize, n: usize) -> io::Result<usize> {
        to.try_io(Interest::WRITABLE, || {
            splice(self.read.as_raw_fd(), to.as_raw_fd(), n - done)
        })
    }
}

/// A bounded buffer (when no pipe could be made).
struct Buffer(Vec<u8>);

impl Carrier for Buffer {
    fn fill(&mut self, from: &TcpStream) -> io::Result<usize> {
        from.try_read(&mut self.0)
    }

    fn drain(&mut self, to: &TcpStream, done: usize, n: usize) -> io::Result<usize> {
        to.try_write(&self.0[done..n])
    }
}

/// `from` → `to` until `from` ends; then `to`'s write side is shut down.
async fn one_way(from: &TcpStream, to: &TcpStream, count: &AtomicU64) -> io::Result<()> {
    match pipe() {
        Ok((read, write)) => carry(Pipe { read, write }, from, to, count).await,
        Err(_) => carry(Buffer(vec![0u8; 16 * 1024]), from, to, count).await,
    }
}

async fn carry(
    mut c: impl Carrier,
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let n = match c.fill(from) {
            Ok(0) => {
                shutdown_write(to);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut done = 0;
        while done < n {
            to.writable().await?;
            match c.drain(to, done, n) {
                Ok(m) => done += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        count.fetch_add(n as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Two connected loopback sockets.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// `c` carries 300 kB written in odd pieces, whole and counted, and the writer's end.
    async fn carries_everything<C: Carrier + Send + 'static>(c: C) {
        let (mut client, from) = socket_pair().await;
        let (to, mut server) = socket_pair().await;
        let count = std::sync::Arc::new(AtomicU64::new(0));
        let n = count.clone();
        let task = tokio::spawn(async move { carry(c, &from, &to, &n).await });
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(7_777) {
                client.write_all(piece).await.unwrap();
            }
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        task.await.unwrap().expect("carried");
        assert_eq!(got, data);
        assert_eq!(count.load(Relaxed), data.len() as u64);
    }

    #[tokio::test]
    async fn both_carriers_carry_every_byte_and_pass_the_end_on() {
        let (read, write) = pipe().expect("pipe");
        carries_everything(Pipe { read, write }).await;
        carries_everything(Buffer(vec![0u8; 1000])).await;
    }

    /// An echo server on loopback; its address.
    async fn echo() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn proxy(
        side: Side,
        routes: ProxyRoutes,
        hold: Duration,
    ) -> (String, watch::Sender<Arc<ProxyRoutes>>, Arc<ProxyStats>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let (tx, rx) = watch::channel(Arc::new(routes));
        let stats = Arc::new(ProxyStats::new("t"));
        tokio::spawn(serve(
            l,
            PortSettings {
                side,
                hold,
                connect_timeout: Duration::from_secs(2),
                max_connections: 2,
            },
            rx,
            stats.clone(),
        ));
        (addr, tx, stats)
    }

    fn t(member: &str, addr: &str) -> Target {
        Target {
            member: member.into(),
            addr: addr.into(),
        }
    }

    #[tokio::test]
    async fn bytes_go_through_both_ways_and_a_route_change_cuts_the_client() {
        let server = echo().await;
        let (addr, tx, stats) = proxy(
            Side::Rw,
            ProxyRoutes {
                rw: Some(t("a", &server)),
                ro: vec![],
            },
            Duration::from_secs(1),
        )
        .await;
        let mut c = TcpStream::connect(&addr).await.expect("connect");
        let big = vec![7u8; 300_000];
        c.write_all(&big).await.expect("write");
        let mut back = vec![0u8; big.len()];
        c.read_exact(&mut back).await.expect("read back");
        assert_eq!(back, big);
        // The primary changes: the client is cut at once.
        tx.send(Arc::new(ProxyRoutes {
            rw: Some(t("b", &server)),
            ro: vec![],
        }))
        .expect("send");
        let mut one = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut one))
            .await
            .expect("the cut is immediate");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert_eq!(stats.rw.cut.load(Relaxed), 1);
        assert_eq!(stats.rw.bytes_in.load(Relaxed), 300_000);
        assert_eq!(stats.rw.bytes_out.load(Relaxed), 300_000);
    }

    #[tokio::test]
    async fn without_a_primary_new_connections_wait_for_one() {
        let server = echo().await;
        let (addr, tx, stats) =
            proxy(Side::Rw, ProxyRoutes::default(), Duration::from_secs(5)).await;
        let mut c = TcpStream::connect(&addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(Arc::new(ProxyRoutes {
            rw: Some(t("a", &server)),
            ro: vec![],
        }))
        .expect("send");
        c.write_all(b"hello").await.expect("write");
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.expect("held, then forwarded");
        assert_eq!(&back, b"hello");
        assert_eq!(stats.rw.unrouted.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn no_replica_means_no_read_only_connection_and_the_limit_holds() {
        let (addr, _tx, stats) = proxy(Side::Ro, ProxyRoutes::default(), Duration::ZERO).await;
        let mut c = TcpStream::connect(&addr).await.expect("connect");
        let mut one = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut one))
            .await
            .expect("closed at once");
        assert!(matches!(r, Ok(0) | Err(_)));
        assert_eq!(stats.ro.unrouted.load(Relaxed), 1);

        let server = echo().await;
        let (addr, _tx, stats) = proxy(
            Side::Ro,
            ProxyRoutes {
                rw: None,
                ro: vec![t("r", &server)],
            },
            Duration::ZERO,
        )
        .await;
        let _a = TcpStream::connect(&addr).await.expect("1");
        let _b = TcpStream::connect(&addr).await.expect("2");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut third = TcpStream::connect(&addr).await.expect("3");
        let r = tokio::time::timeout(Duration::from_secs(2), third.read(&mut one))
            .await
            .expect("refused at once");
        assert!(matches!(r, Ok(0) | Err(_)));
        assert_eq!(stats.ro.refused.load(Relaxed), 1);
    }
}
