"""A most-significant-bit-first reader of a byte string, for the decoders that read coded headers and data
themselves (JPEG scans in jpegdc.py, HEVC parameter sets in heif.py). EOFError past the end."""

from __future__ import annotations


class Bits:
    def __init__(self, data: bytes) -> None:
        self.data, self.at, self.acc, self.count = data, 0, 0, 0

    def bit(self) -> int:
        if self.count == 0:
            if self.at >= len(self.data):
                raise EOFError
            self.acc, self.count, self.at = self.data[self.at], 8, self.at + 1
        self.count -= 1
        return (self.acc >> self.count) & 1

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def golomb(self) -> int:
        """An unsigned Exp-Golomb code (H.264/H.265 ue(v))."""
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise EOFError("an Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.bits(zeros)
