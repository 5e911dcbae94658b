//! Files and folders that only their owner may open: the login token, the approver's key, pins.
//!
//! On Unix that is mode 0600 (files) and 0700 (FERNWART_HOME). On Windows a file in the
//! user's profile is not private by itself: it inherits the ACEs of its folder (SYSTEM and
//! Administrators always, on managed laptops often more, and a FERNWART_HOME elsewhere may
//! grant Users or Everyone). There it gets a protected DACL (inheritance from the parent cut)
//! with one ACE: full access for the current user. A folder's ACE is inherited by what is made
//! in it, so files written later start private too.
//!
//! The Windows half calls the Win32 security API: this file is one of the two places where
//! `unsafe` is allowed (`scripts/test` checks), each call with its SAFETY note.

use std::path::Path;

/// Narrows `path` (a file, or with `dir` a folder) to its owner.
pub fn restrict(path: &Path, dir: bool) -> std::io::Result<()> {
    imp::restrict(path, dir)
}

#[cfg(unix)]
mod imp {
    use std::{os::unix::fs::PermissionsExt, path::Path};

    pub fn restrict(path: &Path, dir: bool) -> std::io::Result<()> {
        let mode = if dir { 0o700 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
}

#[cfg(windows)]
pub use imp::{dacl, running_under_wine, Ace, Dacl};

#[cfg(windows)]
#[allow(unsafe_code)]
mod imp {
    use std::{ffi::c_void, io, os::windows::ffi::OsStrExt, path::Path, ptr};

    use windows_sys::Win32::{
        Foundation::{CloseHandle, LocalFree, ERROR_SUCCESS, HANDLE},
        Security::{
            AclSizeInformation, AddAccessAllowedAceEx,
            Authorization::{ConvertSidToStringSidW, GetNamedSecurityInfoW, SE_FILE_OBJECT},
            EqualSid, GetAce, GetAclInformation, GetLengthSid, GetSecurityDescriptorControl,
            GetTokenInformation, InitializeAcl, InitializeSecurityDescriptor, IsValidSid,
            SetFileSecurityW, SetSecurityDescriptorControl, SetSecurityDescriptorDacl, TokenUser,
            ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, ACL_REVISION, ACL_SIZE_INFORMATION,
            CONTAINER_INHERIT_ACE, DACL_SECURITY_INFORMATION, OBJECT_INHERIT_ACE,
            PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, SECURITY_DESCRIPTOR,
            SE_DACL_PROTECTED, TOKEN_QUERY, TOKEN_USER,
        },
        Storage::FileSystem::FILE_ALL_ACCESS,
        System::{
            LibraryLoader::{GetModuleHandleW, GetProcAddress},
            Threading::{GetCurrentProcess, OpenProcessToken},
        },
    };

    /// `ACCESS_ALLOWED_ACE_TYPE` and `SECURITY_DESCRIPTOR_REVISION` (winnt.h); windows-sys has
    /// them under a feature needed nowhere else.
    const ACCESS_ALLOWED: u8 = 0;
    const SD_REVISION: u32 = 1;

    /// Sets a protected DACL with the one ACE. SetFileSecurityW rather than
    /// SetNamedSecurityInfoW: the latter adds the parent's inheritable ACEs back in user mode
    /// wherever protection is not honoured (wine does so), the former hands the descriptor to
    /// the file system as it is. It does not re-propagate to what a folder already holds:
    /// secrets are written through `write_private`, which narrows each file itself.
    pub fn restrict(path: &Path, dir: bool) -> io::Result<()> {
        let user = UserSid::current()?;
        let flags = if dir { OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE } else { 0 };
        let acl = OwnerAcl::new(&user, flags)?;
        let name = wide(path)?;
        // SAFETY: an all-zero SECURITY_DESCRIPTOR is valid plain data, initialised next.
        let mut sd: SECURITY_DESCRIPTOR = unsafe { std::mem::zeroed() };
        let psd: PSECURITY_DESCRIPTOR = (&mut sd as *mut SECURITY_DESCRIPTOR).cast();
        // SAFETY: `psd` points to a SECURITY_DESCRIPTOR that lives until the end of this
        // function; the DACL it is given (`acl`) lives as long. `name` is NUL-terminated.
        unsafe {
            check(InitializeSecurityDescriptor(psd, SD_REVISION))?;
            check(SetSecurityDescriptorDacl(psd, 1, acl.as_ptr(), 0))?;
            check(SetSecurityDescriptorControl(psd, SE_DACL_PROTECTED, SE_DACL_PROTECTED))?;
            check(SetFileSecurityW(
                name.as_ptr(),
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                psd,
            ))
        }
    }

    /// One entry of a DACL, as far as the checks need it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Ace {
        /// `ACCESS_ALLOWED_ACE_TYPE` is 0, `ACCESS_DENIED_ACE_TYPE` 1.
        pub kind: u8,
        pub flags: u8,
        pub mask: u32,
        /// The SID in its string form (`S-1-5-18`), empty for other ACE types.
        pub sid: String,
        /// The ACE names the user this process runs as.
        pub current_user: bool,
    }

    /// A file's DACL: whether it is protected from inheritance, and its entries.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Dacl {
        pub protected: bool,
        pub aces: Vec<Ace>,
    }

    impl Dacl {
        /// Only the current user may open it, and the parent's entries do not come back.
        pub fn is_owner_only(&self) -> bool {
            self.protected
                && self.aces.len() == 1
                && self.aces[0].kind == ACCESS_ALLOWED
                && self.aces[0].current_user
        }

        /// What wine can show of an owner-only file: wine keeps no ACLs, it turns a DACL
        /// into the file's Unix mode and reads that back as a DACL that always grants SYSTEM
        /// (S-1-5-18) and is never protected. Nobody else (no Everyone, S-1-1-0) is allowed.
        pub fn allows_only_owner_and_system(&self) -> bool {
            let allows = |a: &Ace| a.kind == ACCESS_ALLOWED && a.mask != 0;
            self.aces.iter().filter(|a| allows(a)).all(|a| a.current_user || a.sid == "S-1-5-18")
                && self.aces.iter().any(|a| allows(a) && a.current_user)
        }
    }

    /// Whether this process runs under wine (ntdll exports `wine_get_version` there only).
    pub fn running_under_wine() -> bool {
        let ntdll: Vec<u16> = "ntdll.dll\0".encode_utf16().collect();
        // SAFETY: NUL-terminated names; ntdll is loaded in every process; the handle from
        // GetModuleHandleW is not to be freed.
        unsafe {
            let module = GetModuleHandleW(ntdll.as_ptr());
            !module.is_null()
                && GetProcAddress(module, c"wine_get_version".as_ptr().cast()).is_some()
        }
    }

    /// Reads back `path`'s DACL.
    pub fn dacl(path: &Path) -> io::Result<Dacl> {
        let user = UserSid::current()?;
        let name = wide(path)?;
        let mut acl: *mut ACL = ptr::null_mut();
        let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; the out pointers are valid; on success `sd` is a
        // LocalAlloc'ed descriptor that `acl` points into, freed by `Local` below.
        let rc = unsafe {
            GetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION,
                ptr::null_mut(),
                ptr::null_mut(),
                &mut acl,
                ptr::null_mut(),
                &mut sd,
            )
        };
        win32(rc)?;
        let sd = Local(sd);
        let mut control = 0u16;
        let mut revision = 0u32;
        // SAFETY: `sd.0` is the descriptor just returned; the out pointers are valid.
        check(unsafe { GetSecurityDescriptorControl(sd.0, &mut control, &mut revision) })?;
        let protected = control & SE_DACL_PROTECTED != 0;
        if acl.is_null() {
            // A null DACL grants everyone everything.
            let everyone = Ace {
                kind: ACCESS_ALLOWED,
                flags: 0,
                mask: u32::MAX,
                sid: "S-1-1-0".into(),
                current_user: false,
            };
            return Ok(Dacl { protected, aces: vec![everyone] });
        }
        let mut info = ACL_SIZE_INFORMATION { AceCount: 0, AclBytesInUse: 0, AclBytesFree: 0 };
        // SAFETY: `acl` points into `sd`, alive here; `info` is the struct this class fills.
        check(unsafe {
            GetAclInformation(
                acl,
                (&mut info as *mut ACL_SIZE_INFORMATION).cast(),
                size_of::<ACL_SIZE_INFORMATION>() as u32,
                AclSizeInformation,
            )
        })?;
        let mut aces = Vec::new();
        for i in 0..info.AceCount {
            let mut ace: *mut c_void = ptr::null_mut();
            // SAFETY: `i` is below the ACE count; `ace` receives a pointer into `acl`.
            check(unsafe { GetAce(acl, i, &mut ace) })?;
            // SAFETY: every ACE starts with an ACE_HEADER; for the allowed/denied types
            // (0, 1) the layout is ACCESS_ALLOWED_ACE with the SID starting at SidStart.
            let entry = unsafe {
                let header = &*(ace as *const ACE_HEADER);
                if header.AceType <= 1 {
                    let a = &*(ace as *const ACCESS_ALLOWED_ACE);
                    let sid = ptr::addr_of!(a.SidStart) as PSID;
                    let valid = IsValidSid(sid) != 0;
                    Ace {
                        kind: header.AceType,
                        flags: header.AceFlags,
                        mask: a.Mask,
                        sid: if valid { sid_string(sid)? } else { String::new() },
                        current_user: valid && EqualSid(sid, user.as_psid()) != 0,
                    }
                } else {
                    Ace {
                        kind: header.AceType,
                        flags: header.AceFlags,
                        mask: 0,
                        sid: String::new(),
                        current_user: false,
                    }
                }
            };
            aces.push(entry);
        }
        Ok(Dacl { protected, aces })
    }

    /// `S-1-5-...` for a valid SID.
    ///
    /// # Safety
    /// `sid` must point to a valid SID.
    unsafe fn sid_string(sid: PSID) -> io::Result<String> {
        let mut text: *mut u16 = ptr::null_mut();
        // SAFETY: `sid` is valid (the caller's promise); `text` receives a LocalAlloc'ed,
        // NUL-terminated string, freed by `Local`.
        check(unsafe { ConvertSidToStringSidW(sid, &mut text) })?;
        let text = Local(text.cast());
        let p = text.0 as *const u16;
        let mut len = 0;
        // SAFETY: NUL-terminated (see above); read up to the NUL only.
        while unsafe { *p.add(len) } != 0 {
            len += 1;
        }
        // SAFETY: `len` u16s before the NUL were just read.
        Ok(String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, len) }))
    }

    /// The SID of the user this process runs as, in the TOKEN_USER buffer it came in.
    struct UserSid {
        /// u64 for the alignment TOKEN_USER needs; the SID lies inside this buffer.
        buf: Vec<u64>,
    }

    impl UserSid {
        fn current() -> io::Result<Self> {
            let mut token: HANDLE = ptr::null_mut();
            // SAFETY: the pseudo handle of this process needs no closing; `token` is valid
            // for writing.
            check(unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) })?;
            let token = Handle(token);
            let mut len = 0u32;
            // SAFETY: a size query: no buffer, `len` receives the size needed (the call
            // "fails" with ERROR_INSUFFICIENT_BUFFER, which is expected).
            unsafe { GetTokenInformation(token.0, TokenUser, ptr::null_mut(), 0, &mut len) };
            if (len as usize) < size_of::<TOKEN_USER>() {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u64; (len as usize).div_ceil(8)];
            // SAFETY: `buf` has at least `len` writable bytes, aligned for TOKEN_USER.
            check(unsafe {
                GetTokenInformation(token.0, TokenUser, buf.as_mut_ptr().cast(), len, &mut len)
            })?;
            let sid = Self { buf };
            // SAFETY: the SID pointer was just filled in by the system and points into `buf`.
            if unsafe { IsValidSid(sid.as_psid()) } == 0 {
                return Err(io::Error::other("the process token names no valid user SID"));
            }
            Ok(sid)
        }

        fn as_psid(&self) -> PSID {
            // SAFETY: `buf` holds a TOKEN_USER filled by GetTokenInformation (see `current`).
            unsafe { (*(self.buf.as_ptr() as *const TOKEN_USER)).User.Sid }
        }
    }

    /// A DACL with one ACE: full access for `user`, with `flags` (inheritance for folders).
    struct OwnerAcl {
        /// u32 for the DWORD alignment an ACL needs.
        buf: Vec<u32>,
    }

    impl OwnerAcl {
        fn new(user: &UserSid, flags: u32) -> io::Result<Self> {
            // SAFETY: a valid SID (checked in `UserSid::current`).
            let sid_len = unsafe { GetLengthSid(user.as_psid()) } as usize;
            // ACL header + one ACCESS_ALLOWED_ACE whose SidStart is the SID's first DWORD.
            let size =
                size_of::<ACL>() + size_of::<ACCESS_ALLOWED_ACE>() - size_of::<u32>() + sid_len;
            let mut buf = vec![0u32; size.div_ceil(4)];
            let size = u32::try_from(buf.len() * 4)
                .map_err(|_| io::Error::other("an ACL larger than 4 GiB"))?;
            let acl = buf.as_mut_ptr() as *mut ACL;
            // SAFETY: `buf` has `size` writable bytes, DWORD aligned.
            check(unsafe { InitializeAcl(acl, size, ACL_REVISION) })?;
            // SAFETY: `acl` was initialised with room for this ACE; the SID is valid.
            check(unsafe {
                AddAccessAllowedAceEx(acl, ACL_REVISION, flags, FILE_ALL_ACCESS, user.as_psid())
            })?;
            Ok(Self { buf })
        }

        fn as_ptr(&self) -> *const ACL {
            self.buf.as_ptr() as *const ACL
        }
    }

    struct Handle(HANDLE);

    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: a handle this process opened and owns; closed once.
            unsafe { CloseHandle(self.0) };
        }
    }

    /// Memory the system allocated with LocalAlloc for us.
    struct Local(*mut c_void);

    impl Drop for Local {
        fn drop(&mut self) {
            // SAFETY: returned by the system for us to free with LocalFree, freed once.
            unsafe { LocalFree(self.0) };
        }
    }

    fn wide(path: &Path) -> io::Result<Vec<u16>> {
        let mut w: Vec<u16> = path.as_os_str().encode_wide().collect();
        if w.contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"));
        }
        w.push(0);
        Ok(w)
    }

    fn check(ok: windows_sys::core::BOOL) -> io::Result<()> {
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn win32(rc: u32) -> io::Result<()> {
        if rc != ERROR_SUCCESS {
            return Err(io::Error::from_raw_os_error(rc as i32));
        }
        Ok(())
    }
}

/// Elsewhere there is nothing to narrow with (no such target is built today).
#[cfg(not(any(unix, windows)))]
mod imp {
    pub fn restrict(_path: &std::path::Path, _dir: bool) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(all(test, windows))]
mod tests {
    use super::*;

    /// Owner-only as far as the platform can show it: exactly on Windows, through the Unix
    /// mode under wine (see `Dacl::allows_only_owner_and_system`).
    fn assert_owner_only(d: &Dacl) {
        if running_under_wine() {
            assert!(d.allows_only_owner_and_system(), "{d:?}");
        } else {
            assert!(d.is_owner_only(), "{d:?}");
            assert_eq!(d.aces[0].mask, 0x001F_01FF, "FILE_ALL_ACCESS: {d:?}");
        }
    }

    #[test]
    fn a_restricted_file_is_the_current_users_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("login.json");
        std::fs::write(&file, b"{}").unwrap();
        let before = dacl(&file).unwrap();
        assert!(!before.is_owner_only(), "a new file inherits its folder's ACEs: {before:?}");

        restrict(&file, false).unwrap();

        let d = dacl(&file).unwrap();
        assert_owner_only(&d);
        assert!(d.aces.iter().all(|a| a.sid != "S-1-1-0"), "Everyone: {d:?}");
        if !running_under_wine() {
            assert_eq!(d.aces[0].flags, 0, "a file's ACE is not inherited further: {d:?}");
        }
    }

    #[test]
    fn a_restricted_folder_passes_its_ace_on() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("fernwart");
        std::fs::create_dir(&home).unwrap();

        restrict(&home, true).unwrap();
        std::fs::write(home.join("server-ca.pem"), b"-").unwrap();

        let d = dacl(&home).unwrap();
        assert_owner_only(&d);
        if !running_under_wine() {
            assert_eq!(d.aces[0].flags, 0x3, "object and container inherit: {d:?}");
            // What is made in it later starts private too (wine gives new files the umask's
            // mode instead: there `write_private` narrows each file itself).
            let inner = dacl(&home.join("server-ca.pem")).unwrap();
            assert_eq!(inner.aces.len(), 1, "{inner:?}");
            assert!(inner.aces[0].current_user, "{inner:?}");
        }
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(restrict(&dir.path().join("nope"), false).is_err());
    }
}
