/*
 * Test-only stand-in for Windows' bcryptprimitives.dll, for running fernwart.exe under wine.
 *
 * Rust's standard library on Windows takes its random bytes (HashMap keys) from ProcessPrng in
 * bcryptprimitives.dll (Windows 10 and later). Debian bookworm's wine 8 has no such DLL, so
 * without this one every Rust program fails to start there. It exports ProcessPrng on top of
 * RtlGenRandom (advapi32's SystemFunction036), which wine has. scripts/xplat-test builds it with
 * mingw into the wine prefix it uses for the tests; it is never shipped (scripts/dist does not
 * build it, and real Windows has the real DLL).
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG n = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        length -= n;
    }
    return TRUE;
}
