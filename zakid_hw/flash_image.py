"""The byte layout of model weights in the board's SPI flash: the one place that defines it.

The iCE40 UP5K's SPRAM is not initialised by the bitstream, so weights that live there are read from the
SPI flash at start-up by :class:`rtl_gen.flash_loader.SpiFlashLoader`. The flash holds::

    0 ............ len(bitstream)   the bitstream (the FPGA configures itself from here)
    ... .......... offset           0xFF (erased flash)
    offset ....... offset + n * B   the weights: n words of B = ceil(word_bits / 8) bytes each

Each word is stored two's complement in ``word_bits`` bits, little-endian: byte 0 holds bits 0..7. Bits of the
last byte above ``word_bits`` are 0 and the loader ignores them. Words follow each other without gaps, in
memory address order (word ``i`` is written to address ``i``).
"""

from __future__ import annotations

from .errors import ZakidError

__all__ = [
    "FLASH_BYTES",
    "UP5K_BITSTREAM_BYTES",
    "WEIGHTS_OFFSET",
    "bytes_per_word",
    "pack_words",
    "unpack_words",
    "flash_image",
    "weights_from_image",
]

#: Size of the iCEBreaker's SPI flash (16 MiB; the loader's 24-bit READ address reaches all of it).
FLASH_BYTES = 16 * 1024 * 1024

#: Size of an uncompressed iCE40 UP5K bitstream, as icepack writes it.
UP5K_BITSTREAM_BYTES = 104_090

#: Default flash address of the weights: 1 MiB, far past a UP5K bitstream (about 102 KiB) and aligned to
#: the 64 KiB erase blocks, so the weights can be rewritten without touching the bitstream.
WEIGHTS_OFFSET = 0x10_0000


def bytes_per_word(word_bits: int) -> int:
    """Bytes a word of ``word_bits`` bits takes in the flash: ``ceil(word_bits / 8)``."""
    if not isinstance(word_bits, int) or isinstance(word_bits, bool) or word_bits < 1:
        raise ValueError(f"word_bits must be a positive int, not {word_bits!r}")
    return (word_bits + 7) // 8


def pack_words(words, word_bits: int) -> bytes:
    """The flash bytes of ``words``: each in ``word_bits`` bits two's complement, little-endian, in
    :func:`bytes_per_word` bytes.

    A word may be signed (``-2**(word_bits-1)`` ..) or unsigned (.. ``2**word_bits - 1``); anything else
    raises ValueError.
    """
    nbytes = bytes_per_word(word_bits)
    mask = (1 << word_bits) - 1
    out = bytearray()
    for i, w in enumerate(words):
        w = int(w)
        if not -(1 << (word_bits - 1)) <= w <= mask:
            raise ValueError(f"word {i} = {w} does not fit {word_bits} bits")
        out += (w & mask).to_bytes(nbytes, "little")
    return bytes(out)


def unpack_words(data: bytes, word_bits: int, *, signed: bool = False) -> list[int]:
    """The inverse of :func:`pack_words`: the words in ``data`` (whose length must be a multiple of the word
    size), unsigned or, with ``signed``, two's complement. Raises ValueError if a padding bit is set."""
    nbytes = bytes_per_word(word_bits)
    if len(data) % nbytes:
        raise ValueError(f"{len(data)} bytes are not a whole number of {nbytes}-byte words")
    words = []
    for i in range(0, len(data), nbytes):
        w = int.from_bytes(data[i:i + nbytes], "little")
        if w >> word_bits:
            raise ValueError(f"word {i // nbytes} has bits set above bit {word_bits - 1}: not packed by pack_words")
        if signed and w >> (word_bits - 1):
            w -= 1 << word_bits
        words.append(w)
    return words


def flash_image(bitstream: bytes, weight_bytes: bytes, offset: int = WEIGHTS_OFFSET, *,
                flash_bytes: int = FLASH_BYTES) -> bytes:
    """The flash contents: ``bitstream``, 0xFF up to ``offset``, then ``weight_bytes``.

    Raises :class:`ZakidError` if the bitstream reaches past ``offset`` or the weights past the end of a
    ``flash_bytes`` flash (the loader's 24-bit address reaches 16 MiB at most).
    """
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, not {offset!r}")
    if len(bitstream) > offset:
        raise ZakidError(f"The bitstream ({len(bitstream)} bytes) does not fit below the weights' flash offset "
                         f"0x{offset:06X} ({offset} bytes): choose a larger weights offset.")
    end = offset + len(weight_bytes)
    limit = min(flash_bytes, 1 << 24)
    if end > limit:
        raise ZakidError(f"The weights ({len(weight_bytes)} bytes at flash offset 0x{offset:06X}) end at byte {end}, "
                         f"past the {limit}-byte flash: choose a smaller offset or fewer weights.")
    return bytes(bitstream) + b"\xff" * (offset - len(bitstream)) + bytes(weight_bytes)


def weights_from_image(image: bytes, n_words: int, word_bits: int, offset: int = WEIGHTS_OFFSET, *,
                       signed: bool = False) -> list[int]:
    """The ``n_words`` words the loader reads from flash ``image`` (as :func:`unpack_words` returns them);
    raises ValueError if the image is too short to hold them."""
    end = offset + n_words * bytes_per_word(word_bits)
    if end > len(image):
        raise ValueError(f"the image ({len(image)} bytes) ends before the weights do (byte {end})")
    return unpack_words(image[offset:end], word_bits, signed=signed)
