//! Watching a base backup's tar stream go by: `pg_basebackup -D - -Ft` prints neither its start
//! nor its end position, but the stream holds both — `backup_label` (the first member:
//! `START WAL LOCATION`, `START TIMELINE`) and `backup_manifest` (the last: its `WAL-Ranges`
//! end with the stop position). [`TarScan`] follows the ustar headers without buffering the
//! data: it keeps `backup_label` whole (it is small) and the end of `backup_manifest`.

/// What the stream said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TarScan {
    /// Bytes of the current header block collected so far.
    header: Vec<u8>,
    /// The member being read: its name, data bytes left, padding left.
    member: Option<(String, u64, u64)>,
    /// `backup_label`'s text, once complete.
    pub label: Option<String>,
    label_buf: Vec<u8>,
    /// The last bytes of `backup_manifest`.
    manifest_tail: Vec<u8>,
    /// The manifest was seen to its end.
    pub manifest_done: bool,
    /// The stream is not a tar this scanner understands.
    pub broken: Option<String>,
}

const TAIL: usize = 64 * 1024;

fn octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // base-256 for sizes past 8 GiB
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let s: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

impl TarScan {
    /// Takes the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.broken.is_none() {
            match &mut self.member {
                None => {
                    let want = 512 - self.header.len();
                    let n = want.min(data.len());
                    self.header.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.header.len() == 512 {
                        self.start_member();
                        self.header.clear();
                    }
                }
                Some((name, left, pad)) => {
                    if *left > 0 {
                        let n = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                        let chunk = &data[..n];
                        if name == "backup_label" {
                            if self.label_buf.len() + n <= 1 << 20 {
                                self.label_buf.extend_from_slice(chunk);
                            }
                        } else if name == "backup_manifest" {
                            self.manifest_tail.extend_from_slice(chunk);
                            if self.manifest_tail.len() > 2 * TAIL {
                                let cut = self.manifest_tail.len() - TAIL;
                                self.manifest_tail.drain(..cut);
                            }
                        }
                        *left -= n as u64;
                        data = &data[n..];
                        if *left == 0 {
                            if name == "backup_label" {
                                self.label =
                                    Some(String::from_utf8_lossy(&self.label_buf).into_owned());
                            } else if name == "backup_manifest" {
                                self.manifest_done = true;
                            }
                        }
                    } else {
                        let n = usize::try_from(*pad).unwrap_or(usize::MAX).min(data.len());
                        *pad -= n as u64;
                        data = &data[n..];
                    }
                    if let Some((_, 0, 0)) = self.member {
                        self.member = None;
                    }
                }
            }
        }
    }

    fn start_member(&mut self) {
        let h = &self.header;
        if h.iter().all(|b| *b == 0) {
            return; // end-of-archive block
        }
        if &h[257..262] != b"ustar" {
            self.broken = Some("not a ustar header".into());
            return;
        }
        let Some(size) = octal(&h[124..136]) else {
            self.broken = Some("bad size field".into());
            return;
        };
        let field = |r: std::ops::Range<usize>| {
            String::from_utf8_lossy(&h[r])
                .trim_end_matches('\0')
                .to_string()
        };
        let (name, prefix) = (field(0..100), field(345..500));
        let name = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let name = name.trim_start_matches("./").to_string();
        let pad = (512 - size % 512) % 512;
        if size == 0 {
            if name == "backup_label" {
                self.label = Some(String::new());
            }
            return;
        }
        self.member = Some((name, size, pad));
    }

    /// `START WAL LOCATION` and `START TIMELINE` of `backup_label`.
    pub fn start(&self) -> Option<(u64, u32)> {
        let label = self.label.as_deref()?;
        let mut lsn = None;
        let mut tl = None;
        for line in label.lines() {
            if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
                lsn = rest
                    .split_whitespace()
                    .next()
                    .and_then(crate::dcs::codec::parse_lsn);
            } else if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
                tl = rest.trim().parse().ok();
            }
        }
        Some((lsn?, tl?))
    }

    /// The last `End-LSN` of the manifest's `WAL-Ranges`.
    pub fn stop(&self) -> Option<u64> {
        if !self.manifest_done {
            return None;
        }
        let text = String::from_utf8_lossy(&self.manifest_tail);
        let at = text.rfind("\"End-LSN\"")?;
        let rest = &text[at + "\"End-LSN\"".len()..];
        let v = rest.split('"').nth(1)?;
        crate::dcs::codec::parse_lsn(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, body: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", body.len());
        h[124..136].copy_from_slice(size.as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        let mut out = h;
        out.extend_from_slice(body);
        out.resize(out.len() + (512 - body.len() % 512) % 512, 0);
        out
    }

    #[test]
    fn finds_start_and_stop_in_any_chunking() {
        let label = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 3\n";
        let mut stream = member("backup_label", label);
        stream.extend(member("base/1/1259", &vec![7u8; 20_000]));
        stream.extend(member("PG_VERSION", b"15\n"));
        let manifest = format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [{}],\n\"WAL-Ranges\": [\n{{ \"Timeline\": 3, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }}\n],\n\"Manifest-Checksum\": \"ab\"}}\n",
            "{\"Path\": \"x\"},".repeat(20_000)
        );
        stream.extend(member("backup_manifest", manifest.as_bytes()));
        stream.extend(vec![0u8; 1024]);
        for chunk in [1usize, 7, 511, 512, 4096, stream.len()] {
            let mut s = TarScan::default();
            for c in stream.chunks(chunk) {
                s.feed(c);
            }
            assert_eq!(s.start(), Some((0x200_0028, 3)), "chunk {chunk}");
            assert_eq!(s.stop(), Some(0x200_0100), "chunk {chunk}");
            assert!(s.broken.is_none());
        }
    }

    #[test]
    fn garbage_is_named_not_a_panic() {
        let mut s = TarScan::default();
        s.feed(&[b'x'; 2048]);
        assert!(s.broken.is_some());
        assert_eq!(s.start(), None);
        assert_eq!(octal(b"77777777777\0"), Some(0o77777777777));
        assert_eq!(
            octal(&[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]),
            Some(2 << 32)
        );
    }
}
