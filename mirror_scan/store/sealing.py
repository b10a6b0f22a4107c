"""Sealing: a quarantine item's bytes encrypted at rest to the admin's public key, in age's format
(age-encryption.org/v1, X25519 recipients, through pyrage).

The process that quarantines (the watch daemon, the validator, a scan) holds only the recipient
(`seal_to`, an `age1...` public key): it can seal, never open. Opening needs the identity (an
`AGE-SECRET-KEY-1...` file only the admin reads: `seal_identity`, `--identity`, or typed when asked),
and happens only on a way out (restore, extract, report, `state check --identity`).

On disk a sealed item holds `data.age` (and `companions/<sha256>.age`) where a plain one holds `data`
(and `companions/<sha256>`): a sealed file never has the plain name, so no code that reads `data` can
take ciphertext for the picture. The ledger records, per item and per companion, the sha256 of the
sealed file as written and the plaintext's md5 (the bucket's ETag check needs it, and the sealing process
cannot read the plaintext back). What is sealed is verified by reading the sealed file back against the
hash of what was written; the plaintext's sha256 is taken while it is sealed and checked again on every
way out, when the file is opened.

A way out *opens* the item first: the plaintext is written beside the sealed file under its plain name
(a temp file, verified against the item's sha256, then renamed), the way out runs exactly as for a plain
item, and the plaintext is removed when it ends. A plaintext left by a kill is removed by recovery when
no move of the item is active (an active restore move finishes from it first)."""

from __future__ import annotations

import errno
import getpass
import hashlib
import io
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mirror_scan.errors import MirrorScanError
from mirror_scan.hashing import CHUNK
from mirror_scan.redact import AGE_SECRET
from mirror_scan.store.items import write_all

SEALED_SUFFIX = ".age"
OPENING_SUFFIX = ".opening.tmp"  # a plaintext being written when an item is opened (removed by recovery)
AGE_MAGIC = b"age-encryption.org/v1\n"
MAX_IDENTITY_BYTES = 64 * 1024  # age-keygen writes one key in about 200 bytes
IDENTITY_HINT = (
    "give the identity with --identity FILE (or seal_identity in the config, or MIRROR_SCAN_SEAL_IDENTITY); "
    "`mirror-scan quarantine keygen` made it"
)


class SealError(MirrorScanError):
    """Sealing or opening cannot be done as asked (no identity, the wrong one, a bad key)."""


def _pyrage():
    try:
        import pyrage
    except ImportError:  # pragma: no cover - a dependency of the package
        raise SealError("sealing needs pyrage (age's format), which is not installed",
                        hint="pip install pyrage") from None  # fmt: skip
    return pyrage


@dataclass(frozen=True)
class Written:
    """What was written into the quarantine: the plaintext's sha256, md5 and size, and the sha256 of the
    file as stored when it is sealed (None: stored plain)."""

    sha256: str
    md5: str
    size: int
    sealed_sha256: str | None = None
    sealed_to: str | None = None  # the recipient it is sealed to


class _HashingReader:
    """A readable file that hashes what it hands out (pyrage reads through it)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5()  # noqa: S324 - S3's ETag of a single-part object, not for security
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self._read(n if n and n > 0 else CHUNK)
        self.sha256.update(chunk)
        self.md5.update(chunk)
        self.size += len(chunk)
        return chunk

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class _HashingWriter:
    """A writable file over a descriptor (every byte written), or over nothing (fd None: only hashed),
    hashing what it is given: the sealed file's sha256, or a plaintext's sha256 and md5."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5()  # noqa: S324 - S3's ETag of a single-part object, not for security
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.md5.update(view)
        self.size += len(view)
        if self.fd is not None:
            write_all(self.fd, view)
        return len(view)

    def flush(self) -> None:
        pass

    def written(self) -> Written:
        return Written(self.sha256.hexdigest(), self.md5.hexdigest(), self.size)


class Sealer:
    """Seals to one recipient (an age X25519 public key): everything a quarantining process needs."""

    def __init__(self, recipient: str) -> None:
        pyrage = _pyrage()
        text = recipient.strip()
        try:
            self._recipient = pyrage.x25519.Recipient.from_str(text)
        except Exception:  # pyrage raises its own RecipientError, or ValueError
            raise SealError("seal_to is not an age public key (age1...)",
                            hint="`mirror-scan quarantine keygen` prints one") from None  # fmt: skip
        self.recipient = text

    def write_new(self, read: Callable[[int], bytes], target: bytes | Path | str, dir_fd: int | None = None) -> Written:
        """Seal what `read` hands out into a new file (O_EXCL, 0600), fsynced; the plaintext's hashes and
        the sealed file's sha256 as written."""
        out = _create(target, dir_fd)
        reader, writer = _HashingReader(read), _HashingWriter(out)
        try:
            _pyrage().encrypt_io(reader, writer, [self._recipient])
            os.fsync(out)
        finally:
            os.close(out)
        return Written(reader.sha256.hexdigest(), reader.md5.hexdigest(), reader.size, writer.sha256.hexdigest(),
                       self.recipient)  # fmt: skip


def write_new(source_fd: int, target: bytes | Path | str, sealer: Sealer | None, dir_fd: int | None = None) -> Written:
    """The item's bytes from `source_fd` into a new file, sealed when a sealer is given, else as they are."""
    return _write(lambda n: os.read(source_fd, n), target, sealer, dir_fd)


def write_new_bytes(data: bytes, target: bytes | Path | str, sealer: Sealer | None) -> Written:
    """write_new for bytes in memory (an upload the validator rejected, an object read from the bucket)."""
    return _write(io.BytesIO(data).read, target, sealer, None)


def _write(read: Callable[[int], bytes], target: bytes | Path | str, sealer: Sealer | None,
           dir_fd: int | None) -> Written:  # fmt: skip
    if sealer is not None:
        return sealer.write_new(read, target, dir_fd)
    out = _create(target, dir_fd)
    reader = _HashingReader(read)
    try:
        while chunk := reader.read(CHUNK):
            write_all(out, chunk)
        os.fsync(out)
    finally:
        os.close(out)
    return Written(reader.sha256.hexdigest(), reader.md5.hexdigest(), reader.size)


def _create(target: bytes | Path | str, dir_fd: int | None) -> int:
    return os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                   dir_fd=dir_fd)  # fmt: skip


def sealed_name(plain_name: str) -> str:
    return plain_name + SEALED_SUFFIX


class Identity:
    """The admin's age identity: what opens sealed items. Never logged, never stored by mirror-scan."""

    def __init__(self, text: str, where: str) -> None:
        pyrage = _pyrage()
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        try:
            self._identities = [pyrage.x25519.Identity.from_str(line) for line in lines]
        except Exception:
            raise SealError(f"{where} holds no age identity (AGE-SECRET-KEY-1...)", hint=IDENTITY_HINT) from None
        if not self._identities:
            raise SealError(f"{where} holds no age identity (AGE-SECRET-KEY-1...)", hint=IDENTITY_HINT)
        self.where = where
        self.recipients = [str(identity.to_public()) for identity in self._identities]

    @classmethod
    def from_file(cls, path: Path | str) -> Identity:
        """An identity file, which must be the admin's alone (like ssh's keys: not readable by others). A
        link to one is followed (secret mounts are links); what it leads to must be a regular file."""
        if AGE_SECRET.search(str(path)):  # the key itself pasted where its file's path goes: never echoed
            raise SealError(
                "the identity was given where the path of its file goes (it is not repeated here)",
                hint="write it to a file only you can read (chmod 600) and give that file's path",
            )
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as err:
            raise SealError(f"cannot read the identity file {path}: {err.strerror}", hint=IDENTITY_HINT) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SealError(f"the identity file {path} is not a regular file", hint=IDENTITY_HINT)
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise SealError(f"the identity file {path} is readable by others (mode {mode:04o}); not used",
                                hint=f"chmod 600 {path}")  # fmt: skip
            raw = os.read(fd, MAX_IDENTITY_BYTES + 1)
        except OSError as err:
            raise SealError(f"cannot read the identity file {path}: {err.strerror}", hint=IDENTITY_HINT) from None
        finally:
            os.close(fd)
        if len(raw) > MAX_IDENTITY_BYTES:
            raise SealError(f"the identity file {path} is larger than an identity file is ({MAX_IDENTITY_BYTES} "
                            "bytes at most); not used", hint=IDENTITY_HINT)  # fmt: skip
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SealError(f"the identity file {path} is not text", hint=IDENTITY_HINT) from None
        return cls(text, f"the identity file {path}")

    @classmethod
    def asked(cls) -> Identity:
        """Typed (not echoed) at a terminal."""
        if not sys.stdin.isatty():
            raise SealError("this quarantine is sealed and no identity was given", hint=IDENTITY_HINT)
        return cls(getpass.getpass("age identity for the sealed quarantine (AGE-SECRET-KEY-1...): "),
                   "the identity typed")  # fmt: skip

    def open_to(self, sealed: Path, target: Path | str, dir_fd: int | None = None, durable: bool = True) -> Written:
        """Decrypt `sealed` into a new file `target` (O_EXCL, 0600; fsynced when `durable`: a copy that is kept,
        never for a transient plaintext the sealed file can give again); the plaintext's hashes and size. A
        wrong identity or damaged ciphertext raises SealError and leaves no target."""
        pyrage = _pyrage()
        source = _open_sealed(sealed)
        try:
            out = _create(target, dir_fd)
        except BaseException:
            source.close()
            raise
        writer = _HashingWriter(out)
        try:
            with source:
                pyrage.decrypt_io(source, writer, self._identities)
            if durable:
                os.fsync(out)
        except BaseException as err:
            os.close(out)
            os.unlink(target, dir_fd=dir_fd)
            # pyrage says a wrong key with DecryptError, and damage inside the body with OSError.
            if isinstance(err, pyrage.DecryptError | OSError):
                raise self._refusal(sealed, err) from None
            raise
        os.close(out)
        return writer.written()

    def digest(self, sealed: Path) -> str:
        """The plaintext's sha256, decrypted in memory chunk by chunk (nothing written)."""
        pyrage = _pyrage()
        sink = _HashingWriter(None)
        source = _open_sealed(sealed)
        try:
            with source:
                pyrage.decrypt_io(source, sink, self._identities)
        except (pyrage.DecryptError, OSError) as err:
            raise self._refusal(sealed, err) from None
        return sink.sha256.hexdigest()

    def _refusal(self, sealed: Path, err: Exception) -> SealError:
        if "no matching keys" in str(err).lower():
            return SealError(
                f"{self.where} does not open {sealed.parent.name}/{sealed.name}: it was sealed to another key; "
                "nothing changed",
                hint="give the identity that belongs to seal_to",
            )
        return SealError(
            f"{sealed.parent.name}/{sealed.name} does not decrypt: damaged or not ours; nothing changed",
            hint="compare with your backups; `mirror-scan state check` lists such items",
        )


def _open_sealed(sealed: Path):
    """A sealed file for reading, never through a link (a link planted at data.age is no item's bytes)."""
    try:
        fd = os.open(sealed, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise SealError(f"{sealed.parent.name}/{sealed.name} cannot be read: {err.strerror}",
                        hint="`mirror-scan state check` lists items whose bytes are missing") from None  # fmt: skip
    return open(fd, "rb")


def generate_identity(path: Path) -> str:
    """A new identity written to `path` (O_EXCL, 0600, never over an existing file) in age-keygen's format;
    returns its public key (the recipient for seal_to)."""
    import datetime as dt

    pyrage = _pyrage()
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    text = (f"# created: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} by mirror-scan quarantine keygen\n"
            f"# public key: {recipient}\n{identity}\n")  # fmt: skip
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if err.errno == errno.EEXIST:
            raise SealError(f"{path} exists; not overwritten (it may be the only key to a sealed quarantine)",
                            hint="choose another path") from None  # fmt: skip
        hint = "give a path in an existing directory only you can read (mkdir -m 700)"
        raise SealError(f"cannot write {path}: {err.strerror}", hint=hint) from None
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return recipient


def looks_sealed(path: Path) -> bool:
    """The file begins as age's format does (for reports; the ledger, not this, says what is sealed)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(AGE_MAGIC)) == AGE_MAGIC
    except OSError:
        return False
