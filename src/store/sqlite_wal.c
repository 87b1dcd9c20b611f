/* sqlite_wal.c - checks a SQLite store's write-ahead log before SQLite
 * reads it, so that damage to it refuses the store instead of losing
 * acknowledged commits without a word.
 *
 * SQLite's recovery trusts a log only as far as its checksums hold: a log
 * whose header is invalid is ignored whole, and replay stops at the first
 * frame that fails its checksum, dropping every commit after it. That is
 * right for the torn tail a crash leaves after the last commit, and wrong
 * for damage in the middle. This reads the log the way recovery does
 * (https://www.sqlite.org/fileformat2.html#walformat) and tells the two
 * apart by what follows the point where replay would stop: a frame that
 * carries the log's salts, closes a transaction and holds together with
 * the frame before it is a commit replay would lose.
 *
 * The log is hostile input: every size comes from the file and is bounded,
 * and it is read frame by frame through one buffer of one frame, however
 * large it is. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/sqlite_wal.h"

#define WAL_HDR 32
#define FRAME_HDR 24
#define WAL_MAGIC 0x377f0682u /* | 1: checksum words are big-endian */
#define WAL_VERSION 3007000u
#define PAGE_MIN 512u
#define PAGE_MAX 65536u

/* The two running checksum words. */
struct cksum {
    uint32_t s0, s1;
};

struct wal {
    int fd;
    uint32_t page_size;
    bool big_endian;               /* how checksummed words are read */
    unsigned char salt[8];         /* salt-1 and salt-2 of the header */
    uint64_t nframes;              /* whole frames in the file */
    unsigned char *frame;          /* FRAME_HDR + page_size bytes */
    unsigned char prev[FRAME_HDR]; /* header of the frame before the one in frame */
    /* The chain carried over the frame where replay stopped, as if only its
     * stored checksum were damaged: the frame after it may hold together
     * with that instead of with the value stored. */
    struct cksum through;
    uint64_t through_next; /* the frame that may use it */
};

static uint32_t get32(const unsigned char *p, bool big_endian)
{
    if (big_endian)
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static uint32_t be32(const unsigned char *p)
{
    return get32(p, true);
}

/* Add n bytes (a multiple of 8) to the checksum. */
static void cksum_add(struct cksum *c, const unsigned char *p, size_t n, bool big_endian)
{
    uint32_t s0 = c->s0, s1 = c->s1;

    for (size_t i = 0; i + 8 <= n; i += 8) {
        s0 += get32(p + i, big_endian) + s1;
        s1 += get32(p + i + 4, big_endian) + s0;
    }
    c->s0 = s0;
    c->s1 = s1;
}

static bool cksum_is(const struct cksum *c, const unsigned char *stored)
{
    return c->s0 == be32(stored) && c->s1 == be32(stored + 4);
}

/* Read up to n bytes at off. The count read (short only at the end of the
 * file), or -1 with errno. */
static ssize_t read_at(int fd, unsigned char *buf, size_t n, off_t off)
{
    size_t got = 0;

    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static off_t frame_off(const struct wal *w, uint64_t i)
{
    return (off_t)(WAL_HDR + (i - 1) * (FRAME_HDR + (uint64_t)w->page_size));
}

/* Why the header is unusable (into why), or NULL when it is valid. */
static const char *header_fault(const unsigned char *h, uint32_t db_page_size, char *why,
                                size_t len)
{
    uint32_t magic = be32(h), version = be32(h + 4), psz = be32(h + 8);
    struct cksum c = {0, 0};

    if ((magic & ~1u) != WAL_MAGIC) {
        snprintf(why, len, "no log header (magic number 0x%08" PRIx32 ")", magic);
    } else if (version != WAL_VERSION) {
        snprintf(why, len, "log header has format version %" PRIu32 ", not %u", version,
                 WAL_VERSION);
    } else if (psz < PAGE_MIN || psz > PAGE_MAX || (psz & (psz - 1)) != 0) {
        snprintf(why, len,
                 "log header has page size %" PRIu32 ", not a power of two from 512 to 65536", psz);
    } else if (db_page_size && psz != db_page_size) {
        snprintf(why, len, "log header has page size %" PRIu32 ", the database %" PRIu32, psz,
                 db_page_size);
    } else {
        cksum_add(&c, h, WAL_HDR - 8, magic & 1);
        if (cksum_is(&c, h + 24))
            return NULL;
        snprintf(why, len, "log header checksum mismatch");
    }
    return why;
}

/* Why frame (in w->frame) ends the log, or NULL when it continues it, *c
 * then advanced over it. */
static const char *frame_fault(const struct wal *w, struct cksum *c)
{
    const unsigned char *f = w->frame;
    struct cksum next = *c;

    if (memcmp(f + 8, w->salt, sizeof(w->salt)) != 0)
        return "does not carry the log's salt values";
    if (be32(f) == 0)
        return "has page number 0";
    cksum_add(&next, f, 8, w->big_endian);
    cksum_add(&next, f + FRAME_HDR, w->page_size, w->big_endian);
    if (!cksum_is(&next, f + 16))
        return "fails its checksum";
    *c = next;
    return NULL;
}

/* Does frame i (header in w->frame, the one before in w->prev) close a
 * transaction that replay from the start would not reach? Its own checksum
 * is checked from the one the frame before it stores, and for the frame
 * right after the one replay stops at, also from the chain carried over
 * that frame (when only its stored checksum is damaged); when the frame
 * before is not of this log (damaged too) it cannot be, and the frame
 * counts. */
static int lost_commit(struct wal *w, uint64_t i, bool *lost)
{
    const unsigned char *f = w->frame;
    struct cksum c;
    ssize_t n;

    *lost = false;
    if (memcmp(f + 8, w->salt, sizeof(w->salt)) != 0 || be32(f) == 0 || be32(f + 4) == 0)
        return 0;
    if (memcmp(w->prev + 8, w->salt, sizeof(w->salt)) != 0) {
        *lost = true;
        return 0;
    }
    n = read_at(w->fd, w->frame + FRAME_HDR, w->page_size, frame_off(w, i) + FRAME_HDR);
    if (n < 0)
        return -1;
    if ((size_t)n < w->page_size)
        return 0;
    c.s0 = be32(w->prev + 16);
    c.s1 = be32(w->prev + 20);
    cksum_add(&c, f, 8, w->big_endian);
    cksum_add(&c, f + FRAME_HDR, w->page_size, w->big_endian);
    *lost = cksum_is(&c, f + 16);
    if (!*lost && i == w->through_next) {
        c = w->through;
        cksum_add(&c, f, 8, w->big_endian);
        cksum_add(&c, f + FRAME_HDR, w->page_size, w->big_endian);
        *lost = cksum_is(&c, f + 16);
    }
    return 0;
}

#define REFUSE_TAIL                                                                                \
    "; refusing to start, nothing was changed — restore from backup, or accept the loss with"    \
    " the sqlite3 shell: PRAGMA wal_checkpoint(TRUNCATE)"

int pb__sqlite_wal_check(const char *wal_path, const char *display, uint32_t db_page_size,
                         struct pb_err *err)
{
    struct wal w = {.fd = -1};
    unsigned char h[WAL_HDR];
    struct cksum c = {0, 0};
    const char *why = NULL;
    char buf[128];
    struct stat st;
    uint64_t i, bad = 0, lost = 0;
    ssize_t n;
    int rc = 0;

    w.fd = open(wal_path, O_RDONLY | O_CLOEXEC);
    if (w.fd < 0) {
        if (errno == ENOENT)
            return 0;
        return pb_err_set(err, PB_EIO, "state store %s: cannot open its write-ahead log %s: %s",
                          display, wal_path, strerror(errno));
    }
    if (fstat(w.fd, &st) != 0) {
        rc = pb_err_set(err, PB_EIO, "state store %s: cannot stat its write-ahead log %s: %s",
                        display, wal_path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = pb_err_set(err, PB_EINVAL,
                        "state store %s: its write-ahead log %s is not a regular file", display,
                        wal_path);
        goto out;
    }
    /* Shorter than a header: SQLite sees no log, and no commit fits. */
    if (st.st_size < WAL_HDR)
        goto out;
    n = read_at(w.fd, h, sizeof(h), 0);
    if (n < 0)
        goto ioerr;
    if (n < WAL_HDR)
        goto out;

    why = header_fault(h, db_page_size, buf, sizeof(buf));
    if (why) {
        /* Only damage if a frame fits behind it: a page of the size the
         * database has, or else of the smallest size there is. */
        uint32_t psz = db_page_size ? db_page_size : PAGE_MIN;
        if ((uint64_t)st.st_size >= WAL_HDR + FRAME_HDR + (uint64_t)psz)
            rc = pb_err_set(err, PB_ECORRUPT,
                            "state store %s is damaged: write-ahead log %s (%lld bytes): %s, so"
                            " every commit in it would be lost" REFUSE_TAIL,
                            display, wal_path, (long long)st.st_size, why);
        goto out;
    }
    w.page_size = be32(h + 8);
    w.big_endian = be32(h) & 1;
    memcpy(w.salt, h + 16, sizeof(w.salt));
    w.nframes = ((uint64_t)st.st_size - WAL_HDR) / (FRAME_HDR + (uint64_t)w.page_size);
    c.s0 = be32(h + 24);
    c.s1 = be32(h + 28);
    w.frame = malloc(FRAME_HDR + (size_t)w.page_size);
    if (!w.frame) {
        rc = pb_err_set(err, PB_ENOMEM, "out of memory checking the state store's log");
        goto out;
    }

    /* Replay as recovery does, up to the first frame that ends the log. */
    for (i = 1; i <= w.nframes; i++) {
        n = read_at(w.fd, w.frame, FRAME_HDR + (size_t)w.page_size, frame_off(&w, i));
        if (n < 0)
            goto ioerr;
        if ((size_t)n < FRAME_HDR + (size_t)w.page_size) {
            w.nframes = i - 1; /* shorter than it was: nothing follows */
            break;
        }
        why = frame_fault(&w, &c);
        if (why) {
            bad = i;
            break;
        }
    }
    if (!bad)
        goto out;

    /* What follows it: a commit of this log that holds together is one
     * replay would drop. Frame headers only, and a page per candidate. */
    w.through = c;
    cksum_add(&w.through, w.frame, 8, w.big_endian);
    cksum_add(&w.through, w.frame + FRAME_HDR, w.page_size, w.big_endian);
    w.through_next = bad + 1;
    memcpy(w.prev, w.frame, FRAME_HDR);
    for (i = bad + 1; i <= w.nframes; i++) {
        bool is_lost;

        n = read_at(w.fd, w.frame, FRAME_HDR, frame_off(&w, i));
        if (n < 0)
            goto ioerr;
        if (n < FRAME_HDR)
            break;
        if (lost_commit(&w, i, &is_lost) < 0)
            goto ioerr;
        if (is_lost)
            lost++;
        memcpy(w.prev, w.frame, FRAME_HDR);
    }
    if (lost)
        rc = pb_err_set(err, PB_ECORRUPT,
                        "state store %s is damaged: write-ahead log %s: frame %" PRIu64
                        " of %" PRIu64 " %s, so %" PRIu64
                        " later commit%s would be lost" REFUSE_TAIL,
                        display, wal_path, bad, w.nframes, why, lost, lost == 1 ? "" : "s");
    goto out;

ioerr:
    rc = pb_err_set(err, PB_EIO, "state store %s: cannot read its write-ahead log %s: %s", display,
                    wal_path, strerror(errno));
out:
    free(w.frame);
    close(w.fd);
    return rc;
}
