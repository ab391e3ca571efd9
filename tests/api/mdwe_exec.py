"""Run a command with the kernel's memory-deny-write-execute flag (prctl PR_SET_MDWE), which is
inherited by children and kept across exec: what systemd's MemoryDenyWriteExecute=yes asks for."""
import ctypes
import os
import sys

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1

if __name__ == "__main__":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_MDWE): {os.strerror(ctypes.get_errno())}")
    os.execv(sys.argv[1], sys.argv[1:])
