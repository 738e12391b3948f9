//! The few Win32 calls that std, tokio and the service and job crates do not wrap. Each is one
//! small function that allows `unsafe_code` for itself alone (the crate denies it), with the
//! reason its calls are sound next to them. Nothing else in the crate uses `unsafe`.

use std::ffi::c_void;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::path::Path;

use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};
use windows_sys::Win32::Foundation::{CloseHandle, LocalFree, FILETIME, STILL_ACTIVE};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};
use windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, GetProcessTimes, OpenProcess, TerminateProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_TERMINATE,
};

/// A NUL-terminated UTF-16 copy of `s`, for the `W` functions.
fn wide(s: &std::ffi::OsStr) -> Vec<u16> {
    s.encode_wide().chain(Some(0)).collect()
}

/// `GetDiskFreeSpaceExW`: the bytes available to this user on the volume holding `dir`.
#[allow(unsafe_code)]
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let name = wide(dir.as_os_str());
    let mut free = 0u64;
    // SAFETY: `name` is NUL-terminated and outlives the call; the one out pointer is a live u64;
    // the two totals we do not want may be null, as the function documents.
    let ok = unsafe { GetDiskFreeSpaceExW(name.as_ptr(), &mut free, std::ptr::null_mut(), std::ptr::null_mut()) };
    (ok != 0).then_some(free)
}

/// Whether process `pid` exists and has not exited (`GetExitCodeProcess` says `STILL_ACTIVE`).
#[allow(unsafe_code)]
pub fn process_running(pid: u32) -> bool {
    // SAFETY: OpenProcess takes plain values and returns a handle or null; the handle is closed
    // below exactly once and not used after; the out pointer is a live u32.
    unsafe {
        let h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if h.is_null() {
            return false;
        }
        let mut code = 0u32;
        let ok = GetExitCodeProcess(h, &mut code);
        CloseHandle(h);
        ok != 0 && code == STILL_ACTIVE as u32
    }
}

/// When process `pid` was created (`GetProcessTimes`, 100 ns units since 1601), if it runs.
#[allow(unsafe_code)]
pub fn process_created(pid: u32) -> Option<u64> {
    let zero = FILETIME { dwLowDateTime: 0, dwHighDateTime: 0 };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: as in `process_running`: a handle from OpenProcess, checked, closed once; the four
    // out pointers are live FILETIMEs.
    unsafe {
        let h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if h.is_null() {
            return None;
        }
        let mut code = 0u32;
        let running = GetExitCodeProcess(h, &mut code) != 0 && code == STILL_ACTIVE as u32;
        let ok = running && GetProcessTimes(h, &mut created, &mut exited, &mut kernel, &mut user) != 0;
        CloseHandle(h);
        ok.then(|| (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
    }
}

/// Ends process `pid` with `exit_code` (`TerminateProcess`); nothing when it is gone already.
#[allow(unsafe_code)]
pub fn end_process(pid: u32, exit_code: u32) {
    // SAFETY: as in `process_running`: a handle from OpenProcess, checked, closed once.
    unsafe {
        let h = OpenProcess(PROCESS_TERMINATE, 0, pid);
        if !h.is_null() {
            TerminateProcess(h, exit_code);
            CloseHandle(h);
        }
    }
}

/// Who may open the control pipe: SYSTEM, the Administrators group, and the pipe's owner (the
/// account the agent runs as: the service's, or the user who started it). Protected: nothing
/// is inherited. (Security descriptor definition language.)
const PIPE_ACCESS: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;OW)";

/// Creates an instance of the named pipe `name` with [`PIPE_ACCESS`] as its access list.
#[allow(unsafe_code)]
pub fn create_pipe(options: &ServerOptions, name: &str) -> io::Result<NamedPipeServer> {
    let sddl = wide(PIPE_ACCESS.as_ref());
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `sddl` is NUL-terminated and outlives the call; on success the function allocates
    // the descriptor with LocalAlloc, which we free below once the pipe exists.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut descriptor,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor,
        bInheritHandle: 0,
    };
    // SAFETY: `attributes` is a valid SECURITY_ATTRIBUTES whose descriptor stays allocated for
    // the duration of the call (CreateNamedPipeW copies it into the new object).
    let created =
        unsafe { options.create_with_security_attributes_raw(name, &mut attributes as *mut _ as *mut c_void) };
    // SAFETY: allocated by the conversion above, freed once, not used after.
    unsafe { LocalFree(descriptor) };
    created
}
