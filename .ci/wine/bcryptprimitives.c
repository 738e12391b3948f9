/* A stand-in bcryptprimitives.dll for Wine 8.0, which lacks it. Rust's standard library (and
 * getrandom) on Windows take their random bytes from ProcessPrng; this forwards it to
 * advapi32's RtlGenRandom (SystemFunction036), which Wine has. Test environment only: it is
 * copied into the Wine prefix by .ci/windows and never shipped. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
