//! The platform an executable was built for, read from its own header (ELF, Mach-O, PE), so a
//! release can never publish an x86_64 build under an aarch64 name.

/// `<os>-<arch>` as the agent names platforms, or None for a file that is no known executable.
pub fn platform_of(bytes: &[u8]) -> Option<String> {
    elf(bytes).or_else(|| macho(bytes)).or_else(|| pe(bytes))
}

fn u16_at(b: &[u8], at: usize, little: bool) -> Option<u16> {
    let s: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(if little { u16::from_le_bytes(s) } else { u16::from_be_bytes(s) })
}

fn u32_at(b: &[u8], at: usize, little: bool) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if little { u32::from_le_bytes(s) } else { u32::from_be_bytes(s) })
}

fn elf(b: &[u8]) -> Option<String> {
    if b.get(..4)? != b"\x7fELF" {
        return None;
    }
    let little = *b.get(5)? == 1;
    let arch = match u16_at(b, 18, little)? {
        0x3e => "x86_64",
        0xb7 => "aarch64",
        0x28 => "arm",
        0xf3 => "riscv64",
        0x03 => "x86",
        _ => return None,
    };
    Some(format!("linux-{arch}"))
}

fn macho(b: &[u8]) -> Option<String> {
    let little = match u32_at(b, 0, false)? {
        0xfeedfacf => false,
        0xcffaedfe => true,
        _ => return None,
    };
    let arch = match u32_at(b, 4, little)? {
        0x0100_0007 => "x86_64",
        0x0100_000c => "aarch64",
        _ => return None,
    };
    Some(format!("macos-{arch}"))
}

fn pe(b: &[u8]) -> Option<String> {
    if b.get(..2)? != b"MZ" {
        return None;
    }
    let at = u32_at(b, 0x3c, true)? as usize;
    if b.get(at..at + 4)? != b"PE\0\0" {
        return None;
    }
    let arch = match u16_at(b, at + 4, true)? {
        0x8664 => "x86_64",
        0xaa64 => "aarch64",
        _ => return None,
    };
    Some(format!("windows-{arch}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_platform_from_headers() {
        let this = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(platform_of(&this), Some(format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)));
        let mut elf_arm = b"\x7fELF\x02\x01".to_vec();
        elf_arm.resize(20, 0);
        elf_arm[18] = 0xb7;
        assert_eq!(platform_of(&elf_arm).as_deref(), Some("linux-aarch64"));
        let mut macho = vec![0xcf, 0xfa, 0xed, 0xfe, 0x0c, 0x00, 0x00, 0x01];
        macho.resize(16, 0);
        assert_eq!(platform_of(&macho).as_deref(), Some("macos-aarch64"));
        let mut pe = vec![0u8; 0x90];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
        assert_eq!(platform_of(&pe).as_deref(), Some("windows-x86_64"));
        assert_eq!(platform_of(b"#!/bin/sh\necho hi\n"), None);
    }
}
