//! The platform an executable was built for, read from its own header (ELF, Mach-O, PE), so a
//! release can never publish an x86_64 build under an aarch64 name. A 32-bit ARM ELF is
//! `linux-armv7` when its header says hard-float (EABI 5) and its `.ARM.attributes` say ARMv7,
//! `linux-arm` when they say otherwise, and unknown when it has no attributes to tell.

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
        0x28 => arm(b, little)?,
        0xf3 => "riscv64",
        0x03 => "x86",
        _ => return None,
    };
    Some(format!("linux-{arch}"))
}

/// `e_flags`: EABI version 5, hard-float calling convention.
const EF_ARM_EABI_VER5: u32 = 0x0500_0000;
const EF_ARM_ABI_FLOAT_HARD: u32 = 0x400;
const SHT_ARM_ATTRIBUTES: u32 = 0x7000_0003;
/// `Tag_CPU_arch` and its value for ARMv7.
const TAG_CPU_ARCH: u64 = 6;
const CPU_ARCH_V7: u64 = 10;

/// `armv7` for a hard-float ARMv7 executable, `arm` for another 32-bit ARM one, None when its
/// attributes cannot tell.
fn arm(b: &[u8], little: bool) -> Option<&'static str> {
    let flags = u32_at(b, 0x24, little)?;
    let hard = flags & 0xff00_0000 == EF_ARM_EABI_VER5 && flags & EF_ARM_ABI_FLOAT_HARD != 0;
    let cpu = cpu_arch(b, little)?;
    Some(if hard && cpu == CPU_ARCH_V7 { "armv7" } else { "arm" })
}

/// `Tag_CPU_arch` from the `aeabi` file attributes of a 32-bit ELF's `.ARM.attributes` section.
fn cpu_arch(b: &[u8], little: bool) -> Option<u64> {
    let (shoff, shentsize, shnum) =
        (u32_at(b, 0x20, little)? as usize, u16_at(b, 0x2e, little)? as usize, u16_at(b, 0x30, little)? as usize);
    let section = (0..shnum.min(4096)).find_map(|i| {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        (u32_at(b, at + 4, little)? == SHT_ARM_ATTRIBUTES)
            .then(|| Some((u32_at(b, at + 16, little)? as usize, u32_at(b, at + 20, little)? as usize)))?
    })?;
    let data = b.get(section.0..section.0.checked_add(section.1)?)?;
    // 'A', then subsections: length (u32, itself included), vendor name, then tagged parts.
    let mut rest = data.strip_prefix(b"A")?;
    while rest.len() >= 4 {
        let len = u32_at(rest, 0, little)? as usize;
        let sub = rest.get(4..len)?;
        rest = &rest[len.max(4)..];
        let Some(attrs) = sub.strip_prefix(b"aeabi\0") else { continue };
        // The first part: tag 1 (the whole file), its length, then (tag, value) pairs.
        if attrs.first() != Some(&1) {
            continue;
        }
        let part_len = u32_at(attrs, 1, little)? as usize;
        return file_attribute(attrs.get(5..part_len)?, TAG_CPU_ARCH);
    }
    None
}

/// The numeric value of `tag` among attributes: ULEB128 tags, each with a ULEB128 value or, for
/// tags 4, 5, 67 and odd tags above 32, a NUL-terminated string.
fn file_attribute(mut at: &[u8], tag: u64) -> Option<u64> {
    fn uleb(b: &mut &[u8]) -> Option<u64> {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let (byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(v);
            }
            shift += 7;
        }
    }
    while !at.is_empty() {
        let t = uleb(&mut at)?;
        if matches!(t, 4 | 5 | 67) || (t > 32 && t % 2 == 1) {
            let end = at.iter().position(|c| *c == 0)?;
            at = &at[end + 1..];
            continue;
        }
        let value = uleb(&mut at)?;
        if t == tag {
            return Some(value);
        }
    }
    None
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
        assert_eq!(platform_of(&this), Some(edge_agent_base::build_info::platform()));
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

    /// A 32-bit little-endian ARM ELF with these `e_flags` and, when given, an `.ARM.attributes`
    /// section naming this CPU architecture.
    fn arm_elf(flags: u32, cpu_arch: Option<u8>) -> Vec<u8> {
        let mut b = b"\x7fELF\x01\x01\x01".to_vec();
        b.resize(0x34, 0);
        b[18] = 0x28;
        b[0x24..0x28].copy_from_slice(&flags.to_le_bytes());
        let Some(arch) = cpu_arch else { return b };
        // Attributes: Tag_CPU_name "7-A" (a string), Tag_CPU_arch, Tag_CPU_arch_profile 'A'.
        let pairs = [&[5u8][..], b"7-A\0", &[6, arch], &[7, b'A']].concat();
        let part = [&[1u8][..], &(5 + pairs.len() as u32).to_le_bytes(), &pairs].concat();
        let sub = [&(4 + 6 + part.len() as u32).to_le_bytes()[..], b"aeabi\0", &part].concat();
        let section = [&b"A"[..], &sub].concat();
        let (data_at, sh_at) = (b.len(), b.len() + section.len());
        b.extend(&section);
        let mut sh = vec![0u8; 40];
        sh[4..8].copy_from_slice(&SHT_ARM_ATTRIBUTES.to_le_bytes());
        sh[16..20].copy_from_slice(&(data_at as u32).to_le_bytes());
        sh[20..24].copy_from_slice(&(section.len() as u32).to_le_bytes());
        b.extend(vec![0u8; 40]);
        b.extend(sh);
        b[0x20..0x24].copy_from_slice(&(sh_at as u32).to_le_bytes());
        b[0x2e..0x30].copy_from_slice(&40u16.to_le_bytes());
        b[0x30..0x32].copy_from_slice(&2u16.to_le_bytes());
        b
    }

    #[test]
    fn a_32_bit_arm_executable_is_armv7_only_when_hard_float_and_v7() {
        let hard = EF_ARM_EABI_VER5 | EF_ARM_ABI_FLOAT_HARD;
        let cases = [
            (hard, Some(10), Some("linux-armv7")),
            (EF_ARM_EABI_VER5, Some(10), Some("linux-arm")),
            (hard, Some(6), Some("linux-arm")),
            (hard, Some(14), Some("linux-arm")),
            (hard, None, None),
        ];
        for (flags, arch, want) in cases {
            assert_eq!(platform_of(&arm_elf(flags, arch)).as_deref(), want, "{flags:#x} {arch:?}");
        }
    }
}
