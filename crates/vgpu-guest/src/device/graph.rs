//! Stream capture and graphs (ABI 1.7): a stream's work recorded into a graph by the device,
//! made executable and launched on a stream. Each method but the launch is one command,
//! submitted and awaited; the launch is stream work ([`crate::compute::Stream::graph_launch`]).

use vgpu_abi::cmd::Command;
use vgpu_abi::regs::off;

use super::Device;
use crate::Error;

/// The ABI minor version that added the commands.
const GRAPHS_MINOR: u16 = 7;

impl Device {
    /// Whether the device captures streams into graphs (ABI 1.7 or later). An older vgpud
    /// would answer the commands UNKNOWN_OPCODE: they are not sent to it.
    pub fn has_graphs(&self) -> bool {
        self.view.load_u32(off::ABI_VERSION) as u16 >= GRAPHS_MINOR
    }

    fn graph_cmd(&self, cmd: Command, stream: u32) -> Result<vgpu_abi::Cqe, Error> {
        if !self.has_graphs() {
            return Err(Error::NotSupported(
                "stream capture needs vgpud of ABI 1.7 or later",
            ));
        }
        self.exec_on(cmd, stream)
    }

    /// Stream `stream` starts recording its later work (and that of the streams that join
    /// it by waiting for an event recorded in it) instead of running it.
    pub fn begin_capture(&self, stream: u32) -> Result<(), Error> {
        self.graph_cmd(Command::StreamBeginCapture, stream)
            .map(drop)
    }

    /// Ends the capture `stream` began; returns the graph handle and its number of nodes.
    pub fn end_capture(&self, stream: u32) -> Result<(u64, u64), Error> {
        let c = self.graph_cmd(Command::StreamEndCapture, stream)?;
        Ok((c.result0, c.result1))
    }

    /// Makes an executable graph of `graph`; returns its handle.
    pub fn graph_instantiate(&self, graph: u64) -> Result<u64, Error> {
        Ok(self
            .graph_cmd(Command::GraphInstantiate { graph }, 0)?
            .result0)
    }

    /// Destroys an executable graph (after the device work that may run it).
    pub fn graph_exec_destroy(&self, exec: u64) -> Result<(), Error> {
        self.graph_cmd(Command::GraphExecDestroy { exec }, 0)
            .map(drop)
    }

    /// Destroys a graph.
    pub fn graph_destroy(&self, graph: u64) -> Result<(), Error> {
        self.graph_cmd(Command::GraphDestroy { graph }, 0).map(drop)
    }
}
