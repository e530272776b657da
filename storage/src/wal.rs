//! `Wal`: the Raft log as append-only segment files under `<data_dir>/wal/`, so that an append
//! costs one `pwrite` and one `fdatasync` (sled's flush is a second device round trip in front of
//! the fdatasync, and the log append is on every write's critical path, twice: leader and
//! follower).
//!
//! A segment is named after the index of its first entry (`00000000000000000042.wal`), is
//! preallocated (`fallocate`, so an append changes no file size and its `fdatasync` has no
//! metadata to write) and holds records back to back:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | payload length, little-endian |
//! | 4 | CRC-32 of the index (8 bytes, little-endian) followed by the payload |
//! | 8 | the entry's index, little-endian |
//! | n | the payload (the encoded `LogEntry`) |
//!
//! Indexes are consecutive within a segment and from one segment to the next. The space after
//! the last record reads as zeros: a fresh segment is all zeros, and wherever the log ends
//! without having been written to the end (a truncation, or the torn tail of a crash) the rest
//! of the file is deallocated and preallocated again, so bytes of an entry that was never
//! acknowledged cannot reappear behind a later append.
//!
//! Opening scans every segment. In the last one, the first record that is not whole (a length
//! past the file, a CRC that does not match, the wrong index) is where an append was torn by a
//! crash: the log ends there. In any other segment it is corruption and opening fails, because
//! an append that spills into a new segment syncs the old one first, so only the last segment
//! can hold unsynced bytes.
//!
//! Purging is by whole segments: `purge_through` records the new first index (the caller makes
//! that durable first) and deletes the segments that lie entirely below it; entries below it
//! still in a kept segment are never returned.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::store::sync_dir;
use crate::StorageError;

/// Bytes preallocated for a segment; a batch larger than that gets a segment of its own size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Record header: length, CRC, index.
const HEADER_BYTES: u64 = 16;
const SUFFIX: &str = ".wal";
/// What errors name as the "tree" of a record that does not decode.
const WHERE: &str = "wal";

/// The log's segment files. Appends, truncations and purges come one at a time (the Raft core
/// issues them in order); reads may run beside them.
pub(crate) struct Wal {
    dir: PathBuf,
    /// Bytes preallocated for a segment (`SEGMENT_BYTES` but in tests).
    segment_bytes: u64,
    /// Held by an append, a truncation or a purge for its whole length.
    writer: Mutex<()>,
    /// Held briefly, by readers and to publish a change.
    inner: Mutex<Segments>,
}

/// The writer's copy of the last segment's position (only the writer moves it).
struct Tail {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    end: u64,
    capacity: u64,
}

impl Tail {
    fn of(segment: &Segment) -> Tail {
        Tail {
            first: segment.first,
            path: segment.path.clone(),
            file: segment.file.clone(),
            end: segment.end,
            capacity: segment.capacity,
        }
    }
}

/// Records encoded but not yet written, and what their write and sync cost.
#[derive(Default)]
struct PendingWrite {
    bytes: Vec<u8>,
    /// The offset of each pending record in the tail segment.
    offsets: Vec<u64>,
    synced: Duration,
    /// The planted `unsynced-ack` bug skipped a sync.
    skipped: bool,
}

struct Segments {
    /// Ascending, consecutive: each starts at the index after the previous one's last entry.
    list: Vec<Segment>,
    /// Entries below this index are purged and never returned.
    first_live: u64,
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Offset of each entry's record, entry `first + i` at `records[i]`.
    records: Vec<u64>,
    /// Where the next record goes.
    end: u64,
    /// The preallocated length of the file.
    capacity: u64,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first + self.records.len() as u64
    }

    fn last_index(&self) -> Option<u64> {
        self.next_index()
            .checked_sub(1)
            .filter(|_| !self.records.is_empty())
    }
}

impl Wal {
    /// Opens the log in `dir` (created if missing), dropping segments wholly below `first_live`
    /// and a torn tail of the last segment.
    pub(crate) fn open(dir: &Path, first_live: u64) -> Result<Wal, StorageError> {
        Wal::open_with(dir, first_live, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, first_live: u64, segment_bytes: u64) -> Result<Wal, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create dir", dir, e))?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io("read dir", dir, e))? {
            let entry = entry.map_err(|e| StorageError::io("read dir", dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(first) = name
                .strip_suffix(SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            names.push((first, entry.path()));
        }
        names.sort();
        let count = names.len();
        let mut list: Vec<Segment> = Vec::with_capacity(count);
        let mut removed = false;
        for (position, (first, path)) in names.into_iter().enumerate() {
            let is_last = position + 1 == count;
            let segment = scan_segment(first, path, is_last)?;
            if let Some(previous) = list.last() {
                if previous.next_index() != segment.first {
                    return Err(StorageError::corrupt(
                        WHERE,
                        segment.path.to_string_lossy().as_bytes(),
                        format!(
                            "segment starts at index {} but the one before ends before {}",
                            segment.first,
                            previous.next_index()
                        ),
                    ));
                }
            }
            if is_last {
                // Whatever lies past the last whole record was never acknowledged.
                zero_tail(&segment.file, &segment.path, segment.end, segment.capacity)?;
                sync_file(&segment.file, &segment.path)?;
            }
            if segment.next_index() <= first_live && !is_last {
                remove_file(&segment.path)?;
                removed = true;
                continue;
            }
            list.push(segment);
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            writer: Mutex::new(()),
            inner: Mutex::new(Segments { list, first_live }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Segments> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `entries` (consecutive indexes, following the last entry unless the log holds
    /// none at or above the first live index) and makes them durable. Returns the time spent
    /// syncing, or `None` if the planted `unsynced-ack` bug skipped it. Readers are kept out only
    /// while the new records are published, not during the write and its sync.
    pub(crate) fn append(
        &self,
        entries: Vec<(u64, Vec<u8>)>,
    ) -> Result<Option<Duration>, StorageError> {
        let Some(&(first_index, _)) = entries.first() else {
            return Ok(Some(Duration::ZERO));
        };
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.restart_if_moved_on(first_index)?;
        let mut tail = self.lock().list.last().map(Tail::of);
        let mut write = PendingWrite::default();
        for (position, (index, payload)) in entries.iter().enumerate() {
            assert_eq!(
                *index,
                first_index + position as u64,
                "entries are consecutive"
            );
            let record_len = HEADER_BYTES + payload.len() as u64;
            let fits = tail.as_ref().is_some_and(|tail| {
                tail.end + write.bytes.len() as u64 + record_len <= tail.capacity
            });
            if !fits {
                // What fits in the current segment is written and synced before the next
                // segment gets anything: only the last segment can hold unsynced bytes.
                if let Some(tail) = tail.as_mut() {
                    self.write_and_sync(tail, &mut write)?;
                }
                tail = Some(self.create_segment(*index, self.segment_bytes.max(record_len))?);
            }
            let tail = tail.as_ref().expect("a segment to write to");
            write.offsets.push(tail.end + write.bytes.len() as u64);
            encode_record(&mut write.bytes, *index, payload);
        }
        let tail = tail.as_mut().expect("at least one entry was placed");
        self.write_and_sync(tail, &mut write)?;
        Ok((!write.skipped).then_some(write.synced))
    }

    /// Before an append at `first_index` that does not follow the last entry: only a log with
    /// nothing live left (a snapshot moved it on, or it was truncated to nothing) may continue
    /// at another index, and its files go.
    fn restart_if_moved_on(&self, first_index: u64) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let Some(last) = inner.list.last() else {
            return Ok(());
        };
        if last.next_index() == first_index {
            return Ok(());
        }
        assert!(
            last.next_index() <= inner.first_live
                || inner.list.iter().all(|s| s.records.is_empty()),
            "a log append must follow the last entry (no hole, no overlap): appending \
             {first_index}, the log ends before {}",
            last.next_index()
        );
        for segment in inner.list.drain(..) {
            remove_file(&segment.path)?;
        }
        sync_dir(&self.dir)
    }

    /// Writes what is pending at the tail segment's end, syncs it, and publishes the records.
    fn write_and_sync(
        &self,
        tail: &mut Tail,
        write: &mut PendingWrite,
    ) -> Result<(), StorageError> {
        if write.bytes.is_empty() {
            return Ok(());
        }
        tail.file
            .write_all_at(&write.bytes, tail.end)
            .map_err(|e| StorageError::io("write", &tail.path, e))?;
        let started = Instant::now();
        if crate::planted::armed("unsynced-ack") {
            // Planted bug: acknowledge what is only in the page cache.
            write.skipped = true;
        } else {
            sync_file(&tail.file, &tail.path)?;
        }
        write.synced += started.elapsed();
        tail.end += write.bytes.len() as u64;
        write.bytes.clear();
        let mut inner = self.lock();
        let segment = inner.list.last_mut().expect("the tail segment is listed");
        assert_eq!(
            segment.first, tail.first,
            "only the writer changes the segment list"
        );
        segment.end = tail.end;
        segment.records.append(&mut write.offsets);
        Ok(())
    }

    /// Creates, preallocates and lists an empty segment starting at `first`.
    fn create_segment(&self, first: u64, capacity: u64) -> Result<Tail, StorageError> {
        let path = self.dir.join(format!("{first:020}{SUFFIX}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StorageError::io("create", &path, e))?;
        preallocate(&file, &path, 0, capacity)?;
        sync_file(&file, &path)?;
        sync_dir(&self.dir)?;
        let segment = Segment {
            first,
            path,
            file: Arc::new(file),
            records: Vec::new(),
            end: 0,
            capacity,
        };
        let tail = Tail::of(&segment);
        self.lock().list.push(segment);
        Ok(tail)
    }

    /// The entries whose index is in `range`, in index order.
    pub(crate) fn range(
        &self,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        // Collect what to read under the lock; read outside it.
        let mut reads = Vec::new();
        {
            let inner = self.lock();
            let start = start.max(inner.first_live);
            for segment in &inner.list {
                let from = start.max(segment.first);
                let to = end.min(segment.next_index());
                if from >= to {
                    continue;
                }
                let offset = |index: u64| segment.records[(index - segment.first) as usize];
                let read_from = offset(from);
                let read_to = if to == segment.next_index() {
                    segment.end
                } else {
                    offset(to)
                };
                reads.push((
                    segment.file.clone(),
                    segment.path.clone(),
                    from,
                    to,
                    read_from,
                    read_to,
                ));
            }
        }
        let mut out = Vec::new();
        for (file, path, from, to, read_from, read_to) in reads {
            let mut bytes = vec![0u8; (read_to - read_from) as usize];
            file.read_exact_at(&mut bytes, read_from)
                .map_err(|e| StorageError::io("read", &path, e))?;
            let mut at = 0usize;
            for index in from..to {
                let (payload, len) = decode_record(&bytes[at..], index)
                    .map_err(|why| StorageError::corrupt(WHERE, &index.to_be_bytes(), why))?;
                out.push((index, payload.to_vec()));
                at += len;
            }
        }
        Ok(out)
    }

    /// The entry with the highest index, if any is live.
    pub(crate) fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let last = {
            let inner = self.lock();
            inner
                .list
                .iter()
                .rev()
                .find_map(Segment::last_index)
                .filter(|last| *last >= inner.first_live)
        };
        match last {
            Some(last) => Ok(self.range(last..=last)?.pop()),
            None => Ok(None),
        }
    }

    /// Removes every entry with index `>= index`, durably. Later segments go first, so a crash
    /// in between leaves a shorter log, never a hole.
    pub(crate) fn truncate_from(&self, index: u64) -> Result<Duration, StorageError> {
        let started = Instant::now();
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut inner = self.lock();
        let mut removed = false;
        // The oldest segment stays (emptied below) so its name still starts the log.
        while inner.list.len() > 1 && inner.list.last().is_some_and(|s| s.first >= index) {
            let segment = inner.list.pop().expect("checked");
            remove_file(&segment.path)?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        if let Some(segment) = inner.list.last_mut() {
            if index < segment.next_index() {
                let keep = index.saturating_sub(segment.first) as usize;
                let end = segment.records.get(keep).copied().unwrap_or(segment.end);
                segment.records.truncate(keep);
                segment.end = end;
                zero_tail(&segment.file, &segment.path, end, segment.capacity)?;
                sync_file(&segment.file, &segment.path)?;
            }
        }
        Ok(started.elapsed())
    }

    /// Forgets every entry with index `<= index` and deletes the segments that held only such
    /// entries. The caller has made the new first index durable before.
    pub(crate) fn purge_through(&self, index: u64) -> Result<(), StorageError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut inner = self.lock();
        inner.first_live = inner.first_live.max(index.saturating_add(1));
        let first_live = inner.first_live;
        let mut removed = false;
        // Keep the last segment even when it is wholly purged: appends continue in it.
        while inner.list.len() > 1 && inner.list[0].next_index() <= first_live {
            let segment = inner.list.remove(0);
            remove_file(&segment.path)?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn encode_record(out: &mut Vec<u8>, index: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("a log entry is smaller than 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_crc(index, payload).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
}

fn record_crc(index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// The payload of the record at the start of `bytes` if it is whole and holds entry `index`,
/// and the record's length.
fn decode_record(bytes: &[u8], index: u64) -> Result<(&[u8], usize), String> {
    let header = bytes
        .get(..HEADER_BYTES as usize)
        .ok_or("record header cut short")?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("in header"));
    let len = word(0) as usize;
    let crc = word(4);
    let found = u64::from_le_bytes(header[8..16].try_into().expect("in the header"));
    if found != index {
        return Err(format!("record holds index {found}, expected {index}"));
    }
    let payload = bytes
        .get(HEADER_BYTES as usize..HEADER_BYTES as usize + len)
        .ok_or("record payload cut short")?;
    if record_crc(index, payload) != crc {
        return Err("record CRC does not match".into());
    }
    Ok((payload, HEADER_BYTES as usize + len))
}

/// Reads a segment's records; the log ends at the first record that is not whole, which is an
/// error unless this is the last segment.
fn scan_segment(first: u64, path: PathBuf, is_last: bool) -> Result<Segment, StorageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io("open", &path, e))?;
    let capacity = file
        .metadata()
        .map_err(|e| StorageError::io("stat", &path, e))?
        .len();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
    let mut records = Vec::new();
    let mut at = 0u64;
    let mut record = Vec::new();
    loop {
        let index = first + records.len() as u64;
        if capacity - at < HEADER_BYTES {
            break;
        }
        record.resize(HEADER_BYTES as usize, 0);
        reader
            .read_exact(&mut record)
            .map_err(|e| StorageError::io("read", &path, e))?;
        if record.iter().all(|b| *b == 0) {
            break;
        }
        let len = u64::from(u32::from_le_bytes(
            record[..4].try_into().expect("in the header"),
        ));
        let whole = if capacity - at - HEADER_BYTES < len {
            Err("record payload cut short".to_owned())
        } else {
            record.resize((HEADER_BYTES + len) as usize, 0);
            reader
                .read_exact(&mut record[HEADER_BYTES as usize..])
                .map_err(|e| StorageError::io("read", &path, e))?;
            decode_record(&record, index).map(|_| ())
        };
        match whole {
            Ok(()) => {
                records.push(at);
                at += HEADER_BYTES + len;
            }
            Err(why) if is_last => {
                tracing::warn!(
                    path = %path.display(),
                    offset = at,
                    index,
                    why,
                    "the log's last append was torn by a crash; it ends before it"
                );
                break;
            }
            Err(why) => {
                return Err(StorageError::corrupt(
                    WHERE,
                    path.to_string_lossy().as_bytes(),
                    format!("entry {index} at offset {at}: {why}"),
                ))
            }
        }
    }
    drop(reader);
    Ok(Segment {
        first,
        path,
        file: Arc::new(file),
        records,
        end: at,
        capacity,
    })
}

fn sync_file(file: &File, path: &Path) -> Result<(), StorageError> {
    file.sync_data()
        .map_err(|e| StorageError::io("fdatasync", path, e))
}

fn remove_file(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", path, e)),
    }
}

/// Allocates `[offset, offset + len)` of `file` (reading as zeros where nothing was written).
fn preallocate(file: &File, path: &Path, offset: u64, len: u64) -> Result<(), StorageError> {
    if len == 0 {
        return Ok(());
    }
    let result = nix::fcntl::fallocate(
        file.as_raw_fd(),
        nix::fcntl::FallocateFlags::empty(),
        offset as libc::off_t,
        len as libc::off_t,
    );
    let err = match result {
        Ok(()) => return Ok(()),
        Err(errno) => std::io::Error::from(errno),
    };
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // A file system without fallocate: grow the file; appends then extend nothing either.
        return file
            .set_len(offset + len)
            .map_err(|e| StorageError::io("extend", path, e));
    }
    Err(StorageError::io("fallocate", path, err))
}

/// Makes everything from `end` to `capacity` read as zeros: cut the file at `end`, then
/// preallocate it back to `capacity`.
fn zero_tail(file: &File, path: &Path, end: u64, capacity: u64) -> Result<(), StorageError> {
    file.set_len(end)
        .map_err(|e| StorageError::io("truncate", path, e))?;
    preallocate(file, path, end, capacity.saturating_sub(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small segments, so that a few entries span several.
    const TEST_SEGMENT: u64 = 4096;

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        range
            .map(|i| {
                (
                    i,
                    format!("entry {i}").repeat(i as usize % 7 + 1).into_bytes(),
                )
            })
            .collect()
    }

    fn indexes(rows: &[(u64, Vec<u8>)]) -> Vec<u64> {
        rows.iter().map(|(i, _)| *i).collect()
    }

    #[test]
    fn appends_read_back_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let wal = Wal::open_with(dir.path(), 0, TEST_SEGMENT).expect("opens");
            wal.append(entries(1..=5)).expect("appends");
            wal.append(entries(6..=9)).expect("appends");
            assert_eq!(wal.range(..).expect("reads"), entries(1..=9));
            assert_eq!(wal.range(3..5).expect("reads"), entries(3..=4));
            assert_eq!(wal.last().expect("reads"), entries(9..=9).pop());
        }
        let wal = Wal::open_with(dir.path(), 0, TEST_SEGMENT).expect("reopens");
        assert_eq!(wal.range(..).expect("reads"), entries(1..=9));
        wal.append(entries(10..=10)).expect("appends after reopen");
        assert_eq!(wal.range(9..).expect("reads"), entries(9..=10));
    }

    #[test]
    fn a_torn_tail_is_cut_and_zeroed_so_it_cannot_reappear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path;
        {
            let wal = Wal::open_with(dir.path(), 0, TEST_SEGMENT).expect("opens");
            wal.append(entries(1..=3)).expect("appends");
            let inner = wal.lock();
            let segment = &inner.list[0];
            path = segment.path.clone();
            // Entry 4 and 5 as a crash would leave them: 4's payload half written, 5 whole.
            let mut torn = Vec::new();
            encode_record(&mut torn, 4, b"four, never acknowledged");
            let four_len = torn.len();
            encode_record(&mut torn, 5, b"five, never acknowledged");
            torn[four_len - 3] ^= 0xff;
            segment
                .file
                .write_all_at(&torn, segment.end)
                .expect("writes");
        }
        let wal = Wal::open_with(dir.path(), 0, TEST_SEGMENT).expect("reopens past a torn tail");
        assert_eq!(indexes(&wal.range(..).expect("reads")), [1, 2, 3]);
        // A new entry 4 of the same length as the torn one: the old 5 must not come back.
        wal.append(vec![(4, b"four, a new leader's one".to_vec())])
            .expect("appends");
        drop(wal);
        let wal = Wal::open_with(dir.path(), 0, TEST_SEGMENT).expect("reopens");
        assert_eq!(indexes(&wal.range(..).expect("reads")), [1, 2, 3, 4]);
        let bytes = std::fs::read(&path).expect("reads the file");
        assert!(
            !bytes.windows(4).any(|w| w == b"five"),
            "the torn tail was zeroed"
        );
    }

    #[test]
    fn corruption_before_the_last_segment_refuses_to_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let wal = Wal::open_with(dir.path(), 0, TEST_SEGMENT).expect("opens");
            wal.append(entries(1..=3)).expect("appends");
            let big = vec![(4, vec![7u8; 2 * TEST_SEGMENT as usize])];
            wal.append(big)
                .expect("a record larger than a segment gets its own");
            wal.append(entries(5..=6)).expect("appends");
            assert_eq!(wal.lock().list.len(), 3);
            let inner = wal.lock();
            let first = &inner.list[0];
            first
                .file
                .write_all_at(b"X", first.records[1] + 20)
                .expect("flips a byte");
        }
        let err = Wal::open_with(dir.path(), 0, TEST_SEGMENT)
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("corrupt") && err.to_string().contains("wal"),
            "{err}"
        );
    }

    #[test]
    fn truncate_and_purge_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open_with(dir.path(), 0, TEST_SEGMENT).expect("opens");
        wal.append(entries(1..=3)).expect("appends");
        wal.append(vec![(4, vec![1u8; 2 * TEST_SEGMENT as usize])])
            .expect("appends");
        wal.append(entries(5..=8)).expect("appends");
        wal.truncate_from(4).expect("truncates");
        assert_eq!(indexes(&wal.range(..).expect("reads")), [1, 2, 3]);
        assert_eq!(
            wal.lock().list.len(),
            1,
            "segments from index 4 on are gone"
        );
        wal.append(entries(4..=6))
            .expect("appends after the truncation");
        wal.truncate_from(6).expect("truncates inside a segment");
        assert_eq!(wal.last().expect("reads").map(|(i, _)| i), Some(5));
        wal.purge_through(2).expect("purges");
        assert_eq!(indexes(&wal.range(..).expect("reads")), [3, 4, 5]);
        drop(wal);
        let wal =
            Wal::open_with(dir.path(), 3, TEST_SEGMENT).expect("reopens with the purge recorded");
        assert_eq!(indexes(&wal.range(..).expect("reads")), [3, 4, 5]);
        // Purged past the end: the log is empty, and continues wherever the next append says.
        wal.purge_through(40).expect("purges everything");
        assert_eq!(wal.last().expect("reads"), None);
        wal.append(entries(41..=42))
            .expect("appends after a snapshot's purge");
        assert_eq!(indexes(&wal.range(..).expect("reads")), [41, 42]);
        drop(wal);
        let wal = Wal::open_with(dir.path(), 41, TEST_SEGMENT).expect("reopens");
        assert_eq!(indexes(&wal.range(..).expect("reads")), [41, 42]);
    }
}
