//! The guest's serial port: vm-superio's 8250 UART at COM1 (0x3f8, IRQ 4
//! through an irqfd), transmit only. It carries the kernel log (and
//! whatever init writes to `/dev/console`) to a file, the launcher's
//! stderr, or nowhere, and remembers the first line that says
//! "Kernel panic" so a reset can be reported as a guest panic.
//!
//! Runs on the vCPU threads (each byte is a port write exit). Output is
//! collected a line at a time: one write per line, never per byte; a
//! partial line is written at [`SerialLog::finish`]. Everything here is
//! guest output: lines are capped in length, bytes are passed through
//! unchanged to the console, and the panic text is made printable.

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// A line longer than this is written out in pieces.
const MAX_LINE: usize = 4096;
/// Longest panic text kept.
const MAX_PANIC_TEXT: usize = 512;

/// Where the serial output goes.
#[derive(Debug)]
pub enum Console {
    File(File),
    Stderr,
    Discard,
}

/// The UART's output side.
#[derive(Debug)]
pub struct SerialLog {
    console: Console,
    line: Vec<u8>,
    panic: Option<String>,
    /// Whether any "Kernel panic" line went by.
    saw_panic: bool,
    /// A marker to watch for, and when a line holding it went by.
    marker: Option<(Vec<u8>, Option<Instant>)>,
}

fn printable(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s: String = s
        .chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .take(MAX_PANIC_TEXT)
        .collect();
    s.trim().to_string()
}

fn contains(line: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && line.windows(needle.len()).any(|w| w == needle)
}

fn is_panic(line: &[u8]) -> bool {
    contains(line, b"Kernel panic")
}

impl SerialLog {
    pub fn new(console: Console) -> Self {
        Self {
            console,
            line: Vec::with_capacity(256),
            panic: None,
            saw_panic: false,
            marker: None,
        }
    }

    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        if let Some((needle, seen @ None)) = &mut self.marker {
            if contains(&self.line, needle) {
                *seen = Some(Instant::now());
            }
        }
        if !self.saw_panic && is_panic(&self.line) {
            self.saw_panic = true;
            self.panic = Some(printable(&self.line));
        }
        // A console that fails to take the log loses it; the guest must not
        // be stopped for that.
        let _ = match &mut self.console {
            Console::File(f) => f.write_all(&self.line),
            Console::Stderr => io::stderr().lock().write_all(&self.line),
            Console::Discard => Ok(()),
        };
        self.line.clear();
    }

    /// Note when a line containing `marker` goes by (benchmarks).
    pub fn watch(&mut self, marker: &str) {
        self.marker = Some((marker.as_bytes().to_vec(), None));
    }

    /// When the watched marker went by.
    pub fn marker_seen(&self) -> Option<Instant> {
        self.marker.as_ref().and_then(|m| m.1)
    }

    /// Write out a partial last line.
    pub fn finish(&mut self) {
        self.emit();
        if let Console::File(f) = &mut self.console {
            let _ = f.flush();
        }
    }

    /// The first "Kernel panic" line, if one went by (a partial line
    /// counts).
    pub fn panic_message(&self) -> Option<String> {
        if let Some(p) = &self.panic {
            return Some(p.clone());
        }
        is_panic(&self.line).then(|| printable(&self.line))
    }
}

impl Write for SerialLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.line.push(b);
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.emit();
            }
        }
        Ok(buf.len())
    }

    /// The UART flushes after every byte: a no-op, lines are written whole.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The UART registers in a snapshot: divisor low/high, IER, IIR, LCR,
/// LSR, MCR, MSR, scratch; and the input FIFO.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SerialSnap {
    pub regs: [u8; 9],
    pub in_buffer: Vec<u8>,
}

/// The UART's interrupt line: an irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The UART on the port I/O bus.
pub struct SerialDevice {
    uart: Mutex<Serial<IrqTrigger, NoEvents, SerialLog>>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    pub fn new(irq: EventFd, console: Console) -> Self {
        Self {
            uart: Mutex::new(Serial::new(IrqTrigger(irq), SerialLog::new(console))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Serial<IrqTrigger, NoEvents, SerialLog>> {
        self.uart.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The irqfd to register for the UART's IRQ.
    pub fn with_irqfd<R>(&self, f: impl FnOnce(&EventFd) -> R) -> R {
        f(&self.lock().interrupt_evt().0)
    }

    pub fn panic_message(&self) -> Option<String> {
        self.lock().writer().panic_message()
    }

    /// A UART continuing a snapshot's registers (`state` was checked:
    /// at most a FIFO's worth of input).
    pub fn from_state(irq: EventFd, console: Console, state: &SerialSnap) -> Result<Self, String> {
        let st = vm_superio::serial::SerialState {
            baud_divisor_low: state.regs[0],
            baud_divisor_high: state.regs[1],
            interrupt_enable: state.regs[2],
            interrupt_identification: state.regs[3],
            line_control: state.regs[4],
            line_status: state.regs[5],
            modem_control: state.regs[6],
            modem_status: state.regs[7],
            scratch: state.regs[8],
            in_buffer: state.in_buffer.clone(),
        };
        let uart = Serial::from_state(&st, IrqTrigger(irq), NoEvents, SerialLog::new(console))
            .map_err(|e| format!("the serial port state is refused: {e:?}"))?;
        Ok(Self {
            uart: Mutex::new(uart),
        })
    }

    /// The UART's registers, for a snapshot.
    pub fn state(&self) -> SerialSnap {
        let st = self.lock().state();
        SerialSnap {
            regs: [
                st.baud_divisor_low,
                st.baud_divisor_high,
                st.interrupt_enable,
                st.interrupt_identification,
                st.line_control,
                st.line_status,
                st.modem_control,
                st.modem_status,
                st.scratch,
            ],
            in_buffer: st.in_buffer,
        }
    }

    pub fn finish(&self) {
        self.lock().writer_mut().finish();
    }

    pub fn watch(&self, marker: &str) {
        self.lock().writer_mut().watch(marker);
    }

    pub fn marker_seen(&self) -> Option<Instant> {
        self.lock().writer().marker_seen()
    }
}

impl BusDevice for SerialDevice {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match (data.len(), u8::try_from(offset)) {
            (1, Ok(off)) if off < 8 => data[0] = self.lock().read(off),
            _ => data.fill(0),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if let (1, Ok(off)) = (data.len(), u8::try_from(offset)) {
            if off < 8 {
                // Errors are a full irqfd counter (the interrupt is
                // pending anyway) or a lost log byte: nothing to stop for.
                let _ = self.lock().write(off, data[0]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn lines_and_panic() {
        let path = std::env::temp_dir().join(format!("serial-test-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        let dev = SerialDevice::new(EventFd::new(0).unwrap(), Console::File(f));
        for b in b"hello\r\n[ 1.0] Kernel panic - not syncing: \x07Attempted to kill init!\nend" {
            dev.write(0, &[*b]);
        }
        assert_eq!(
            dev.panic_message().as_deref(),
            Some("[ 1.0] Kernel panic - not syncing: Attempted to kill init!")
        );
        let mut s = String::new();
        File::open(&path).unwrap().read_to_string(&mut s).unwrap();
        // The partial last line is not written yet.
        assert!(s.ends_with("init!\n"), "{s:?}");
        dev.finish();
        s.clear();
        File::open(&path).unwrap().read_to_string(&mut s).unwrap();
        assert!(s.ends_with("init!\nend"));
        // LSR says the transmitter is empty; odd widths and offsets are harmless.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        let mut wide = [9u8; 4];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0; 4]);
        dev.write(100, &[1]);
        dev.write(0, &[1, 2]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn no_panic_and_partial_panic() {
        let mut l = SerialLog::new(Console::Discard);
        l.watch("VM-BOOT-OK");
        l.write_all(b"fine\n").unwrap();
        assert!(l.marker_seen().is_none());
        l.write_all(b"x VM-BOOT-OK\n").unwrap();
        assert!(l.marker_seen().is_some());
        assert_eq!(l.panic_message(), None);
        l.write_all(b"Kernel panic - x").unwrap();
        assert_eq!(l.panic_message().as_deref(), Some("Kernel panic - x"));
        let mut long = SerialLog::new(Console::Discard);
        long.write_all(&vec![b'a'; MAX_LINE * 3]).unwrap();
        assert!(long.line.len() < MAX_LINE);
    }
}
