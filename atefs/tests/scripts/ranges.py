"""fallocate, SEEK_DATA/SEEK_HOLE and copy_file_range through a real mount (run by mount.rs).

Block size 64 KiB. Asserts the answers a user would rely on; exits non-zero on the first
mismatch with a message naming it."""
import ctypes
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


B = 64 * 1024
d = sys.argv[1]
p = os.path.join(d, "sparse")
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(fd, b"a" * B, 0)          # block 0: data
os.pwrite(fd, b"b" * B, 3 * B)      # blocks 1-2: hole, block 3: data
os.fsync(fd)

def check(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got}, want {want}")

check("SEEK_DATA 0", os.lseek(fd, 0, os.SEEK_DATA), 0)
check("SEEK_HOLE 0", os.lseek(fd, 0, os.SEEK_HOLE), B)
check("SEEK_DATA in hole", os.lseek(fd, B + 5, os.SEEK_DATA), 3 * B)
check("SEEK_HOLE at the end", os.lseek(fd, 3 * B, os.SEEK_HOLE), 4 * B)
try:
    os.lseek(fd, 4 * B, os.SEEK_DATA)
    sys.exit("SEEK_DATA at EOF did not fail")
except OSError as e:
    check("SEEK_DATA at EOF errno", e.errno, 6)  # ENXIO

# Punch the middle of block 0 and all of block 3, keeping the size.
fallocate(fd, 0x01 | 0x02, 100, 200)
fallocate(fd, 0x01 | 0x02, 3 * B, B)
check("size after punch", os.fstat(fd).st_size, 4 * B)
check("punched bytes", os.pread(fd, 300, 0), b"a" * 100 + b"\0" * 200)
check("punched block", os.pread(fd, 10, 3 * B), b"\0" * 10)
check("SEEK_DATA after punch", os.lseek(fd, 0, os.SEEK_DATA), 0)
try:
    os.lseek(fd, B, os.SEEK_DATA)
    sys.exit("SEEK_DATA found the punched block")
except OSError as e:
    check("SEEK_DATA after the last punch errno", e.errno, 6)

# posix_fallocate extends; zero range too.
os.posix_fallocate(fd, 0, 5 * B)
check("size after posix_fallocate", os.fstat(fd).st_size, 5 * B)
fallocate(fd, 0x10, 5 * B - 10, 20)  # FALLOC_FL_ZERO_RANGE past the end
check("size after zero range", os.fstat(fd).st_size, 5 * B + 10)
try:
    fallocate(fd, 0x08, 0, B)  # FALLOC_FL_COLLAPSE_RANGE is not supported
    sys.exit("collapse range did not fail")
except OSError as e:
    check("collapse range errno", e.errno, 95)  # EOPNOTSUPP
os.close(fd)

# copy_file_range between two files of the mount.
src = os.path.join(d, "src")
with open(src, "wb") as f:
    f.write(bytes(range(256)) * 1000)
s = os.open(src, os.O_RDONLY)
t = os.open(os.path.join(d, "dst"), os.O_WRONLY | os.O_CREAT, 0o644)
n = os.copy_file_range(s, t, 256000, 0, 7)
check("copy_file_range count", n, 256000)
os.close(s)
os.close(t)
with open(os.path.join(d, "dst"), "rb") as f:
    check("copy_file_range content", f.read(), b"\0" * 7 + bytes(range(256)) * 1000)
print("ok")
