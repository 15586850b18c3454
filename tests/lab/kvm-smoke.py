#!/usr/bin/python3
"""Smallest real use of /dev/kvm: run 5 bytes of real-mode code in a VM.

The guest does `mov al, 0x42; out 0x10, al; hlt`. The check passes when
KVM_RUN reports the port write (KVM_EXIT_IO with 0x42) and then KVM_EXIT_HLT.
Usage inside the lab:  tests/lab/lab.sh --kvm -- python3 tests/lab/kvm-smoke.py
Exit status 0 and "kvm-smoke: ok" on success; 1 and a reason otherwise.
"""
import ctypes
import fcntl
import mmap
import os
import struct
import sys

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5

CODE = bytes([0xB0, 0x42, 0xE6, 0x10, 0xF4])  # mov al,0x42; out 0x10,al; hlt
LOAD = 0x1000


def fail(msg):
    print(f"kvm-smoke: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        fail(f"open /dev/kvm: {e.strerror}")
    api = fcntl.ioctl(kvm, KVM_GET_API_VERSION, 0)
    if api != 12:
        fail(f"KVM API version {api}, expected 12")
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)

    mem = mmap.mmap(-1, 0x4000, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mem[LOAD : LOAD + len(CODE)] = CODE
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    region = struct.pack("IIQQQ", 0, 0, 0, len(mem), addr)
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)

    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
    run = mmap.mmap(vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    sregs = bytearray(0x138)
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs, True)
    struct.pack_into("Q", sregs, 0, 0)  # cs.base
    struct.pack_into("H", sregs, 12, 0)  # cs.selector
    fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))

    regs = [0] * 18  # rax..r15, rip, rflags
    regs[16] = LOAD
    regs[17] = 0x2
    fcntl.ioctl(vcpu, KVM_SET_REGS, struct.pack("18Q", *regs))

    fcntl.ioctl(vcpu, KVM_RUN, 0)
    reason = struct.unpack_from("I", run, 8)[0]
    if reason != KVM_EXIT_IO:
        fail(f"first exit reason {reason}, expected KVM_EXIT_IO")
    direction, width, port, count, offset = struct.unpack_from("BBHIQ", run, 32)
    value = run[offset]
    if (direction, width, port, count, value) != (1, 1, 0x10, 1, 0x42):
        fail(f"unexpected port I/O: dir={direction} size={width} port={port:#x} value={value:#x}")

    fcntl.ioctl(vcpu, KVM_RUN, 0)
    reason = struct.unpack_from("I", run, 8)[0]
    if reason != KVM_EXIT_HLT:
        fail(f"second exit reason {reason}, expected KVM_EXIT_HLT")
    print("kvm-smoke: ok (guest wrote 0x42 to port 0x10, then halted)")


if __name__ == "__main__":
    main()
