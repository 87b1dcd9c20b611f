/* fuzz_wal.c - the check of a SQLite store's write-ahead log that runs before
 * SQLite opens the store (pb__sqlite_wal_check, src/store/sqlite_wal.c).
 *
 * The input is a mode byte and a log. The log is written to one memfd and
 * checked through /proc/self/fd/N. Few random logs get past the checksums,
 * so the mode repairs them first, in the byte order the magic names:
 *  - bit 0: a valid header checksum;
 *  - bit 1: also the header's salts and a valid cumulative checksum in
 *    every frame, except as bits 2-3 say for frame k, k = bits 4-7 modulo
 *    the number of frames:
 *      0  nothing: the log is intact;
 *      1  one byte of frame k changes after the repair (damage in the
 *         middle); where, and to what, the bytes its checksum had choose;
 *      2  frame k keeps its bytes, and the frames after it chain on from
 *         the checksum it stores;
 *      3  frame k and every frame after it keep their bytes (a torn tail).
 *
 * Properties:
 *  - the result is 0 or PB_ECORRUPT: the file is always readable, and
 *    PB_EIO, PB_EINVAL and PB_ENOMEM are for logs that cannot be read;
 *    a refusal carries its code and a message;
 *  - the same file gives the same result twice;
 *  - the result is the one the rules in sqlite_wal.c give, with the log
 *    replayed here from the file format
 *    (https://www.sqlite.org/fileformat2.html#walformat): a log shorter
 *    than a header, one that is intact, or one whose frames after the
 *    point where replay stops close no transaction, is accepted; one with
 *    a damaged header is refused exactly when a frame fits behind it; a
 *    commit after that point that holds together with the frame before it
 *    (or follows a frame of another log, or, right after that point, holds
 *    together with the chain carried over the frame there) refuses the log;
 *  - whatever those rules say, a repaired log left intact (bits 2-3 are 0)
 *    is accepted, and one with a byte changed before a commit (bits 2-3
 *    are 1) is refused;
 *  - all that for the database page sizes the store can pass: unknown (0),
 *    the one in the log's header, and one that differs from it. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "patchbay/pb_err.h"
#include "store/sqlite_wal.h"

#define WAL_HDR 32
#define FRAME_HDR 24

enum { FIX_NONE, FIX_DAMAGE, FIX_KEEP_ONE, FIX_TORN };

static int fd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fd = memfd_create("fuzz_wal", MFD_CLOEXEC);
    FUZZ_ASSERT(fd >= 0, "memfd_create: %s", strerror(errno));
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    return 0;
}

static uint32_t get32(const uint8_t *p, bool big_endian)
{
    if (big_endian)
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static uint32_t be32(const uint8_t *p)
{
    return get32(p, true);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* s[0] += x0 + s[1]; s[1] += x1 + s[0] over the 32-bit words of p (n a
 * multiple of 8). */
static void sum(uint32_t s[2], const uint8_t *p, size_t n, bool big_endian)
{
    for (size_t i = 0; i + 8 <= n; i += 8) {
        s[0] += get32(p + i, big_endian) + s[1];
        s[1] += get32(p + i + 4, big_endian) + s[0];
    }
}

/* The checksum of the frame at f chained on from s, into s. */
static void frame_sum(uint32_t s[2], const uint8_t *f, uint32_t psz, bool big_endian)
{
    sum(s, f, 8, big_endian);
    sum(s, f + FRAME_HDR, psz, big_endian);
}

static bool sum_is(const uint32_t s[2], const uint8_t *stored)
{
    return s[0] == be32(stored) && s[1] == be32(stored + 4);
}

static void store_sum(uint8_t *stored, const uint32_t s[2])
{
    put_be32(stored, s[0]);
    put_be32(stored + 4, s[1]);
}

static bool page_size_ok(uint32_t psz)
{
    return psz >= 512 && psz <= 65536 && (psz & (psz - 1)) == 0;
}

/* The shape the mode gave the log. */
struct shape {
    bool frames_fixed; /* bit 1, on a header whose page size is valid */
    int fix;           /* FIX_* */
    size_t k;          /* the frame it applies to, 0-based */
    size_t at;         /* FIX_DAMAGE: offset of the changed byte in frame k */
};

static void repair(uint8_t *w, size_t len, uint8_t mode, struct shape *sh)
{
    bool be;
    uint32_t psz, s[2] = {0, 0};
    size_t fsz, n, i;
    uint8_t at[8];

    memset(sh, 0, sizeof(*sh));
    if (len < WAL_HDR || !(mode & 3))
        return;
    be = w[3] & 1;
    psz = be32(w + 8);
    sum(s, w, 24, be);
    store_sum(w + 24, s);
    if (!(mode & 2) || !page_size_ok(psz))
        return;
    fsz = FRAME_HDR + (size_t)psz;
    n = (len - WAL_HDR) / fsz;
    sh->frames_fixed = true;
    if (n == 0)
        return;
    sh->fix = (mode >> 2) & 3;
    sh->k = (size_t)(mode >> 4) % n;
    memcpy(at, w + WAL_HDR + sh->k * fsz + 16, sizeof(at));
    for (i = 0; i < n; i++) {
        uint8_t *f = w + WAL_HDR + i * fsz;

        if (sh->fix == FIX_TORN && i >= sh->k)
            break;
        if (sh->fix == FIX_KEEP_ONE && i == sh->k) {
            s[0] = be32(f + 16);
            s[1] = be32(f + 20);
            continue;
        }
        memcpy(f + 8, w + 16, 8);
        frame_sum(s, f, psz, be);
        store_sum(f + 16, s);
    }
    if (sh->fix == FIX_DAMAGE) {
        sh->at = be32(at) % fsz;
        w[WAL_HDR + sh->k * fsz + sh->at] ^= at[4] | 1;
    }
}

/* What the rules of sqlite_wal.c make of the log w for a database of page
 * size db (0: unknown), replayed here from the file format. why says which
 * rule decided. */
static int expect(const uint8_t *w, size_t len, uint32_t db, const char **why)
{
    bool be;
    uint32_t psz, s[2] = {0, 0}, through[2] = {0, 0};
    size_t fsz, n, i, bad;

    if (len < WAL_HDR) {
        *why = "shorter than a header";
        return 0;
    }
    be = w[3] & 1;
    psz = be32(w + 8);
    sum(s, w, 24, be);
    if ((be32(w) & ~1u) != 0x377f0682u || be32(w + 4) != 3007000u || !page_size_ok(psz) ||
        (db && psz != db) || !sum_is(s, w + 24)) {
        *why = "damaged header";
        return len >= WAL_HDR + FRAME_HDR + (size_t)(db ? db : 512) ? PB_ECORRUPT : 0;
    }
    fsz = FRAME_HDR + (size_t)psz;
    n = (len - WAL_HDR) / fsz;
    for (bad = 0; bad < n; bad++) {
        const uint8_t *f = w + WAL_HDR + bad * fsz;

        /* The chain carried over this frame whatever it stores: the frame
         * after the one replay stops at may hold together with it. */
        through[0] = s[0];
        through[1] = s[1];
        frame_sum(through, f, psz, be);
        if (memcmp(f + 8, w + 16, 8) != 0 || be32(f) == 0 || !sum_is(through, f + 16))
            break;
        s[0] = through[0];
        s[1] = through[1];
    }
    if (bad == n) {
        *why = "intact";
        return 0;
    }
    *why = "no commit after the frame replay stops at";
    for (i = bad + 1; i < n; i++) {
        const uint8_t *f = w + WAL_HDR + i * fsz, *prev = f - fsz;

        if (memcmp(f + 8, w + 16, 8) != 0 || be32(f) == 0 || be32(f + 4) == 0)
            continue;
        *why = "commits after the frame replay stops at, none holding together";
        if (memcmp(prev + 8, w + 16, 8) != 0) {
            *why = "a commit after a frame of another log";
            return PB_ECORRUPT;
        }
        s[0] = be32(prev + 16);
        s[1] = be32(prev + 20);
        frame_sum(s, f, psz, be);
        if (sum_is(s, f + 16)) {
            *why = "a commit that holds together after the frame replay stops at";
            return PB_ECORRUPT;
        }
        if (i == bad + 1) {
            s[0] = through[0];
            s[1] = through[1];
            frame_sum(s, f, psz, be);
            if (sum_is(s, f + 16)) {
                *why = "a commit right after a frame whose stored checksum alone is damaged";
                return PB_ECORRUPT;
            }
        }
    }
    return 0;
}

/* Does the shape of the log promise a verdict (into want), whatever the
 * rules above say? Only with repaired frames, behind a valid header. */
static bool shape_promises(const uint8_t *w, size_t len, const struct shape *sh, int *want)
{
    size_t fsz, n, i;

    if (!sh->frames_fixed || (be32(w) & ~1u) != 0x377f0682u || be32(w + 4) != 3007000u)
        return false;
    fsz = FRAME_HDR + (size_t)be32(w + 8);
    n = (len - WAL_HDR) / fsz;
    /* Replay stops at a page number 0 too, maybe before where the mode
     * says. */
    for (i = 0; i < n; i++)
        if (be32(w + WAL_HDR + i * fsz) == 0 && (sh->fix != FIX_DAMAGE || i < sh->k))
            return false;
    if (n == 0 || sh->fix == FIX_NONE) {
        *want = 0; /* intact */
        return true;
    }
    if (sh->fix != FIX_DAMAGE)
        return false;
    /* Damage to frame k, and a commit after it: wherever in frame k the
     * byte changed (its stored checksum too), the commit is one replay
     * would lose. */
    for (i = sh->k + 1; i < n; i++) {
        const uint8_t *f = w + WAL_HDR + i * fsz;

        if (be32(f) != 0 && be32(f + 4) != 0) {
            *want = PB_ECORRUPT;
            return true;
        }
    }
    return false;
}

static int check(uint32_t db, const uint8_t *w, size_t len)
{
    struct pb_err err = {0};
    int rc = pb__sqlite_wal_check(path, "fuzz.db", db, &err), want;
    const char *why;

    FUZZ_ASSERT(rc == 0 || rc == PB_ECORRUPT, "db page size %u: result %d (%s) on a readable file",
                (unsigned)db, rc, err.msg);
    if (rc != 0)
        FUZZ_ASSERT(err.code == rc && err.msg[0], "db page size %u: refusal %d without its report",
                    (unsigned)db, rc);
    want = expect(w, len, db, &why);
    FUZZ_ASSERT(rc == want, "db page size %u: %s gives %d, not %d: %s", (unsigned)db, why, want, rc,
                err.msg);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *w;
    size_t len, off;
    struct shape sh;
    int rc, want;

    if (size == 0)
        return 0;
    len = size - 1;
    w = malloc(len ? len : 1);
    FUZZ_ASSERT(w, "out of memory");
    memcpy(w, data + 1, len);
    repair(w, len, data[0], &sh);

    for (off = 0; off < len;) {
        ssize_t n = pwrite(fd, w + off, len - off, (off_t)off);
        FUZZ_ASSERT(n > 0, "writing the log: %s", strerror(errno));
        off += (size_t)n;
    }
    FUZZ_ASSERT(ftruncate(fd, (off_t)len) == 0, "truncating the log: %s", strerror(errno));

    rc = check(0, w, len);
    FUZZ_ASSERT(check(0, w, len) == rc, "a second check gives another result");
    if (shape_promises(w, len, &sh, &want))
        FUZZ_ASSERT(rc == want, "mode 0x%02x (frame %zu, byte %zu) gives %d, not %d", data[0], sh.k,
                    sh.at, rc, want);
    if (len >= WAL_HDR) {
        uint32_t psz = be32(w + 8);
        if (page_size_ok(psz))
            check(psz, w, len);
        check(psz == 512 ? 1024 : 512, w, len);
    }
    free(w);
    return 0;
}
