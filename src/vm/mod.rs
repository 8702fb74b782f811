//! QEMU VMs: overlay, seed, process, QMP, accelerator probe, forwarded SSH port.
