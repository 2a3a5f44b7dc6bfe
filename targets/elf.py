"""Read section sizes, symbols and constant data from a 32-bit little-endian ELF (Arm firmware).

Reading the file directly gives exact section flags (``SHF_ALLOC``, ``SHT_NOBITS``), which
``arm-none-eabi-size -A`` does not print, and needs no subprocess.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

import attrs

_SHT_SYMTAB = 2
_SHT_NOBITS = 8
_SHF_ALLOC = 0x2
_STT_FUNC = 2
_STB_LOCAL = 0
_EHDR = struct.Struct("<16sHHIIIIIHHHHHH")
_SHDR = struct.Struct("<IIIIIIIIII")
_SYM = struct.Struct("<IIIBBH")


@attrs.frozen
class Section:
    """One section header."""

    name: str
    addr: int
    size: int
    offset: int
    alloc: bool  # occupies target memory
    nobits: bool  # no bytes in the file (.bss)


@attrs.frozen
class Symbol:
    """One symbol-table entry; ``addr`` has the Thumb bit cleared for functions."""

    name: str
    addr: int
    size: int


@attrs.frozen
class ElfImage:
    """The parts of a firmware ELF that tvm-mcu reports on."""

    path: Path
    sections: tuple[Section, ...]
    symbols: Mapping[str, Symbol]

    def read(self, addr: int, nbytes: int) -> bytes:
        """The initial contents of target memory ``[addr, addr + nbytes)`` from a loaded section."""
        for s in self.sections:
            if s.alloc and not s.nobits and s.addr <= addr and addr + nbytes <= s.addr + s.size:
                with self.path.open("rb") as f:
                    f.seek(s.offset + addr - s.addr)
                    return f.read(nbytes)
        raise ValueError(f"{self.path}: no loaded section holds {nbytes} bytes at {addr:#x}")


def _cstr(table: bytes, offset: int) -> str:
    return table[offset : table.index(b"\0", offset)].decode("ascii", "replace")


def read_elf(path: Path) -> ElfImage:
    """Parse ``path``; raises ``ValueError`` if it is not a 32-bit little-endian ELF."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        raise ValueError(f"{path} is not a 32-bit little-endian ELF file")
    ehdr = _EHDR.unpack_from(data)
    shoff, shentsize, shnum, shstrndx = ehdr[6], ehdr[11], ehdr[12], ehdr[13]
    headers = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    shstr = headers[shstrndx]
    names = data[shstr[4] : shstr[4] + shstr[5]]

    sections = []
    symbols: dict[str, Symbol] = {}
    local_symbols: dict[str, Symbol] = {}
    for h in headers[1:]:
        sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link = h[:7]
        sections.append(
            Section(
                name=_cstr(names, sh_name),
                addr=sh_addr,
                size=sh_size,
                offset=sh_offset,
                alloc=bool(sh_flags & _SHF_ALLOC),
                nobits=sh_type == _SHT_NOBITS,
            )
        )
        if sh_type == _SHT_SYMTAB:
            strtab = headers[sh_link]
            strings = data[strtab[4] : strtab[4] + strtab[5]]
            for off in range(sh_offset, sh_offset + sh_size, _SYM.size):
                st_name, st_value, st_size, st_info, _, _ = _SYM.unpack_from(data, off)
                name = _cstr(strings, st_name)
                if name:
                    addr = st_value & ~1 if st_info & 0xF == _STT_FUNC else st_value
                    # Global and weak names are unique; a static name may repeat across files.
                    table = local_symbols if st_info >> 4 == _STB_LOCAL else symbols
                    table.setdefault(name, Symbol(name=name, addr=addr, size=st_size))
    return ElfImage(path=path, sections=tuple(sections), symbols={**local_symbols, **symbols})
