//! Stream capture and graphs (ABI 1.7) for a device that runs commands itself (the cpu
//! reference device): which streams capture, what each capture recorded, and the graphs and
//! executable graphs made of the recordings. A graph is the list of its commands in the order
//! the device took them; a launch replays them, in that order, on the launch stream. The order
//! of issue already honours every dependency the captured streams had on each other (a stream
//! that waits for an event is issued after the event's record), so one list keeps them.

use std::collections::HashMap;
use std::sync::Arc;

use vgpu_abi::cmd::Command;
use vgpu_abi::Status;

/// Recorded commands, shared by a graph and the executable graphs made of it.
pub type Recording = Arc<[Command]>;

/// What the device does with a command that arrives on a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Not captured: run it.
    Run,
    /// Recorded (or, for a fence, dropped): it completes at once without running.
    Done,
}

/// One VM's captures, graphs and executable graphs.
#[derive(Debug, Default)]
pub struct Captures {
    /// Capturing streams → the stream that began their capture.
    streams: HashMap<u32, u32>,
    /// Captures in progress, by the stream that began them: what they recorded, `None` once
    /// invalidated.
    open: HashMap<u32, Option<Vec<Command>>>,
    /// Events whose latest record is in a capture → that capture.
    events: HashMap<u32, u32>,
    graphs: HashMap<u64, Recording>,
    execs: HashMap<u64, Recording>,
}

impl Captures {
    /// Whether `stream` is capturing.
    pub fn capturing(&self, stream: u32) -> bool {
        self.streams.contains_key(&stream)
    }

    /// Where `cmd`, arriving on `stream`, goes. A command a capturing stream cannot record
    /// (its synchronisation, its query, a wait for an event from outside the capture)
    /// invalidates the capture and fails with `CAPTURE_UNSUPPORTED`.
    pub fn route(&mut self, stream: u32, cmd: &Command) -> Result<Route, Status> {
        let Some(&origin) = self.streams.get(&stream) else {
            match *cmd {
                // A wait for an event recorded in a capture in progress joins that capture.
                Command::StreamWaitEvent { event } => {
                    if let Some(&o) = self.events.get(&event) {
                        if self.open.contains_key(&o) {
                            self.streams.insert(stream, o);
                            self.record(o, cmd);
                            return Ok(Route::Done);
                        }
                    }
                }
                Command::EventRecord { event } => {
                    self.events.remove(&event);
                }
                _ => {}
            }
            return Ok(Route::Run);
        };
        match *cmd {
            Command::Memset { .. }
            | Command::CopyH2D { .. }
            | Command::CopyD2H { .. }
            | Command::CopyD2D { .. }
            | Command::Launch { .. }
            | Command::LaunchIndirect { .. } => {
                self.record(origin, cmd);
                Ok(Route::Done)
            }
            Command::GraphLaunch { exec } => {
                // A graph launched into a capture: its commands, in place.
                let cmds = self
                    .execs
                    .get(&exec)
                    .ok_or(Status::InvalidArgument)?
                    .clone();
                if let Some(Some(rec)) = self.open.get_mut(&origin) {
                    rec.extend_from_slice(&cmds);
                }
                Ok(Route::Done)
            }
            Command::EventRecord { event } => {
                self.events.insert(event, origin);
                self.record(origin, cmd);
                Ok(Route::Done)
            }
            Command::StreamWaitEvent { event } => {
                if self.events.get(&event) == Some(&origin) {
                    // Ordered already: the record was issued before this wait.
                    Ok(Route::Done)
                } else {
                    self.invalidate(origin);
                    Err(Status::CaptureUnsupported)
                }
            }
            Command::Synchronize { all_streams: false } | Command::StreamQuery => {
                self.invalidate(origin);
                Err(Status::CaptureUnsupported)
            }
            // Nothing ran, so there is nothing to fence; the guest waits for no fence of a
            // capturing stream.
            Command::Fence { .. } => Ok(Route::Done),
            _ => Ok(Route::Run),
        }
    }

    fn record(&mut self, origin: u32, cmd: &Command) {
        if let Some(Some(rec)) = self.open.get_mut(&origin) {
            rec.push(*cmd);
        }
    }

    fn invalidate(&mut self, origin: u32) {
        if let Some(rec) = self.open.get_mut(&origin) {
            *rec = None;
        }
    }

    /// `stream` begins a capture (`INVALID_ARGUMENT` when it is capturing already).
    pub fn begin(&mut self, stream: u32) -> Result<(), Status> {
        if self.capturing(stream) {
            return Err(Status::InvalidArgument);
        }
        self.streams.insert(stream, stream);
        self.open.insert(stream, Some(Vec::new()));
        Ok(())
    }

    /// Ends the capture `stream` began: every stream in it stops capturing, and its recording
    /// becomes graph `handle`, returned with its number of commands (`CAPTURE_INVALIDATED`
    /// when it was invalidated, `INVALID_ARGUMENT` when `stream` began none).
    pub fn end(&mut self, stream: u32, handle: u64) -> Result<(u64, u64), Status> {
        let rec = self.open.remove(&stream).ok_or(Status::InvalidArgument)?;
        self.streams.retain(|_, o| *o != stream);
        self.events.retain(|_, o| *o != stream);
        let rec = rec.ok_or(Status::CaptureInvalidated)?;
        let nodes = rec.len() as u64;
        self.graphs.insert(handle, rec.into());
        Ok((handle, nodes))
    }

    /// Makes executable graph `handle` of `graph`.
    pub fn instantiate(&mut self, graph: u64, handle: u64) -> Result<u64, Status> {
        let rec = self
            .graphs
            .get(&graph)
            .ok_or(Status::InvalidArgument)?
            .clone();
        self.execs.insert(handle, rec);
        Ok(handle)
    }

    /// The commands executable graph `exec` runs.
    pub fn exec(&self, exec: u64) -> Result<Recording, Status> {
        self.execs
            .get(&exec)
            .cloned()
            .ok_or(Status::InvalidArgument)
    }

    /// Destroys executable graph `exec`.
    pub fn destroy_exec(&mut self, exec: u64) -> Result<(), Status> {
        self.execs
            .remove(&exec)
            .map(drop)
            .ok_or(Status::InvalidArgument)
    }

    /// Destroys graph `graph` (its executable graphs keep their commands).
    pub fn destroy_graph(&mut self, graph: u64) -> Result<(), Status> {
        self.graphs
            .remove(&graph)
            .map(drop)
            .ok_or(Status::InvalidArgument)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: Command = Command::Memset {
        dst: 0x1000,
        len: 4,
        value: 7,
        width: 1,
    };

    #[test]
    fn a_capture_records_its_streams_work_and_a_joined_stream() {
        let mut c = Captures::default();
        assert_eq!(c.route(1, &SET), Ok(Route::Run));
        c.begin(1).unwrap();
        assert_eq!(c.begin(1), Err(Status::InvalidArgument));
        assert_eq!(c.route(1, &SET), Ok(Route::Done));
        // Stream 2 is not in it until it waits for an event recorded in it.
        assert_eq!(c.route(2, &SET), Ok(Route::Run));
        let rec = Command::EventRecord { event: 5 };
        let wait = Command::StreamWaitEvent { event: 5 };
        assert_eq!(c.route(1, &rec), Ok(Route::Done));
        assert_eq!(c.route(2, &wait), Ok(Route::Done));
        assert!(c.capturing(2));
        let copy = Command::CopyD2D {
            dst: 1,
            src: 2,
            len: 3,
        };
        assert_eq!(c.route(2, &copy), Ok(Route::Done));
        // Stream 2 joins back: 1 waits for an event 2 recorded.
        let rec2 = Command::EventRecord { event: 6 };
        c.route(2, &rec2).unwrap();
        c.route(1, &Command::StreamWaitEvent { event: 6 }).unwrap();
        // Fences and all-streams synchronisations do not enter the graph.
        assert_eq!(
            c.route(
                1,
                &Command::Fence {
                    staging_offset: 0,
                    value: 1
                }
            ),
            Ok(Route::Done)
        );
        assert_eq!(
            c.route(1, &Command::Synchronize { all_streams: true }),
            Ok(Route::Run)
        );
        assert_eq!(c.end(2, 99), Err(Status::InvalidArgument), "2 began none");
        // Three commands went into the graph of stream 1's capture (then 2's record).
        let (g, nodes) = c.end(1, 40).unwrap();
        assert_eq!(g, 40);
        assert!(nodes >= 3, "{nodes}");
        assert!(!c.capturing(1) && !c.capturing(2));
        assert_eq!(c.instantiate(40, 41), Ok(41));
        let got: Vec<Command> = c.exec(41).unwrap().to_vec();
        assert_eq!(got, vec![SET, rec, wait, copy, rec2]);
        // An event of the ended capture no longer joins anything.
        assert_eq!(c.route(3, &wait), Ok(Route::Run));
        c.destroy_graph(40).unwrap();
        assert_eq!(c.exec(41).unwrap().len(), 5, "an exec outlives its graph");
        assert_eq!(c.instantiate(40, 42), Err(Status::InvalidArgument));
        c.destroy_exec(41).unwrap();
        assert_eq!(c.destroy_exec(41), Err(Status::InvalidArgument));
    }

    #[test]
    fn what_a_capture_cannot_record_invalidates_it() {
        for bad in [
            Command::Synchronize { all_streams: false },
            Command::StreamQuery,
            Command::StreamWaitEvent { event: 9 },
        ] {
            let mut c = Captures::default();
            c.route(4, &Command::EventRecord { event: 9 }).unwrap();
            c.begin(4).unwrap();
            assert_eq!(c.route(4, &bad), Err(Status::CaptureUnsupported), "{bad:?}");
            // Later work is still taken (and dropped) until the capture ends.
            assert_eq!(c.route(4, &SET), Ok(Route::Done));
            assert_eq!(c.end(4, 1), Err(Status::CaptureInvalidated));
            assert!(!c.capturing(4));
            assert_eq!(
                c.instantiate(1, 2),
                Err(Status::InvalidArgument),
                "no graph"
            );
        }
    }

    #[test]
    fn a_graph_launched_into_a_capture_is_inlined() {
        let mut c = Captures::default();
        c.begin(1).unwrap();
        c.route(1, &SET).unwrap();
        c.end(1, 10).unwrap();
        c.instantiate(10, 11).unwrap();
        c.begin(2).unwrap();
        assert_eq!(
            c.route(2, &Command::GraphLaunch { exec: 11 }),
            Ok(Route::Done)
        );
        assert_eq!(
            c.route(2, &Command::GraphLaunch { exec: 12 }),
            Err(Status::InvalidArgument)
        );
        c.route(2, &SET).unwrap();
        c.end(2, 20).unwrap();
        c.instantiate(20, 21).unwrap();
        assert_eq!(c.exec(21).unwrap().to_vec(), vec![SET, SET]);
    }
}
