/* test_file_read.c - the record readers of the file inputs: CSV (RFC 4180),
 * JSON lines, JSON, XML and raw; bad records and fatal problems with their
 * line and column; the digest; records across the reader's buffer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "pb_test.h"
#include "plugins/inputs/file/file_int.h"

struct got {
    int n;
    char body[64][512];
    int64_t line[64], col[64];
    const char *bad[64];
    int64_t bad_line[64], bad_col[64];
    int end; /* 0 the end, PB_EPARSE fatal */
    struct rd_fatal f;
    char digest[FILE_DIGEST_HEX];
};

static char bad_store[64][256];

static int tmpfile_with(const char *data, size_t len)
{
    char path[] = "/tmp/pb_test_file_read_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    unlink(path);
    if (write(fd, data, len) != (ssize_t)len) {
        close(fd);
        return -1;
    }
    lseek(fd, 0, SEEK_SET);
    return fd;
}

static void read_all(const struct rd_opts *o, const char *data, size_t len, struct got *g)
{
    memset(g, 0, sizeof(*g));
    int fd = tmpfile_with(data, len);
    PB_CHECK(fd >= 0);
    struct pb_err err = {0};
    struct rd *r = rd_create(o, fd, true, &err);
    PB_CHECK(r != NULL);
    if (!r) {
        close(fd);
        return;
    }
    for (;;) {
        struct rd_rec rec;
        int rc = rd_next(r, &rec, &g->f);
        if (rc != 1) {
            g->end = rc;
            break;
        }
        if (g->n < 64) {
            if (rec.bad) {
                snprintf(bad_store[g->n], sizeof(bad_store[0]), "%s", rec.bad);
                g->bad[g->n] = bad_store[g->n];
                g->bad_line[g->n] = rec.bad_line;
                g->bad_col[g->n] = rec.bad_col;
            } else {
                snprintf(g->body[g->n], sizeof(g->body[0]), "%.*s", (int)rec.len, rec.body);
            }
            g->line[g->n] = rec.line;
            g->col[g->n] = rec.col;
        }
        g->n++;
    }
    if (g->end == 0)
        PB_EQ_INT(rd_digest(r, g->digest), 0);
    rd_destroy(r);
    close(fd);
}

static struct rd_opts csv_opts(void)
{
    return (struct rd_opts){
        .format = FMT_CSV, .max_record = 1 << 20, .header = true, .delimiter = ',', .quote = '"'};
}

static void read_str(const struct rd_opts *o, const char *s, struct got *g)
{
    read_all(o, s, strlen(s), g);
}

PB_TEST(csv_rfc4180)
{
    struct rd_opts o = csv_opts();
    struct got g;
    read_str(&o,
             "\xEF\xBB\xBFid,name,note\r\n"
             "1,\"Smith, J\",\"said \"\"hi\"\"\"\r\n"
             "\r\n"
             "2,plain,\"two\nlines\"\n"
             "3,,\n"
             "4,\"\",last",
             &g);
    PB_EQ_INT(g.end, 0);
    PB_EQ_INT(g.n, 4);
    PB_EQ_STR(g.body[0], "{\"id\":\"1\",\"name\":\"Smith, J\",\"note\":\"said \\\"hi\\\"\"}");
    PB_EQ_STR(g.body[1], "{\"id\":\"2\",\"name\":\"plain\",\"note\":\"two\\nlines\"}");
    PB_EQ_STR(g.body[2], "{\"id\":\"3\",\"name\":\"\",\"note\":\"\"}");
    PB_EQ_STR(g.body[3], "{\"id\":\"4\",\"name\":\"\",\"note\":\"last\"}");
    PB_EQ_INT(g.line[0], 2);
    PB_EQ_INT(g.line[1], 4);
    PB_EQ_INT(g.line[2], 6); /* after the quoted line end */
    PB_EQ_INT(g.line[3], 7);
}

PB_TEST(csv_bad_records_and_positions)
{
    struct rd_opts o = csv_opts();
    struct got g;
    read_str(&o,
             "a,b\n"
             "1,2\n"
             "1,2,3\n"
             "x\"y,2\n"
             "\"q\"z,2\n"
             "\xff\xfe,2\n"
             "5,6\n",
             &g);
    PB_EQ_INT(g.end, 0);
    PB_EQ_INT(g.n, 6);
    PB_CHECK(!g.bad[0]);
    PB_CONTAINS(g.bad[1], "3 fields");
    PB_EQ_INT(g.bad_line[1], 3);
    PB_CONTAINS(g.bad[2], "quote character in an unquoted field");
    PB_EQ_INT(g.bad_line[2], 4);
    PB_EQ_INT(g.bad_col[2], 2);
    PB_CONTAINS(g.bad[3], "after a closing quote");
    PB_EQ_INT(g.bad_line[3], 5);
    PB_EQ_INT(g.bad_col[3], 4);
    PB_CONTAINS(g.bad[4], "UTF-8");
    PB_EQ_INT(g.bad_line[4], 6);
    PB_EQ_STR(g.body[5], "{\"a\":\"5\",\"b\":\"6\"}");
}

PB_TEST(csv_fatal_unterminated_quote)
{
    struct rd_opts o = csv_opts();
    struct got g;
    read_str(&o, "a,b\n1,2\n3,\"open\n4,5\n", &g);
    PB_EQ_INT(g.n, 1);
    PB_EQ_INT(g.end, PB_EPARSE);
    PB_EQ_INT(g.f.line, 3);
    PB_EQ_INT(g.f.col, 3);
    PB_CONTAINS(g.f.reason, "not terminated");
}

PB_TEST(csv_duplicate_header_is_fatal)
{
    struct rd_opts o = csv_opts();
    struct got g;
    read_str(&o, "a,b,a\n1,2,3\n", &g);
    PB_EQ_INT(g.end, PB_EPARSE);
    PB_CONTAINS(g.f.reason, "twice");
}

PB_TEST(csv_without_header_and_with_columns)
{
    struct rd_opts o = csv_opts();
    o.header = false;
    o.delimiter = ';';
    o.quote = '\'';
    struct got g;
    read_str(&o, "1;'a;b'\n2;c\n3\n", &g);
    PB_EQ_INT(g.n, 3);
    PB_EQ_STR(g.body[0], "[\"1\",\"a;b\"]");
    PB_EQ_STR(g.body[1], "[\"2\",\"c\"]");
    PB_CONTAINS(g.bad[2], "first row");
    char *names[] = {"id", "v"};
    struct pb_strlist cols = {2, names};
    o.columns = &cols;
    read_str(&o, "1;x\n", &g);
    PB_EQ_STR(g.body[0], "{\"id\":\"1\",\"v\":\"x\"}");
}

PB_TEST(csv_record_too_large)
{
    struct rd_opts o = csv_opts();
    o.max_record = 16;
    struct got g;
    read_str(&o, "a,b\n1,2\n12345678901234567890,x\n3,4\n", &g);
    PB_EQ_INT(g.n, 3);
    PB_CONTAINS(g.bad[1], "max_record");
    PB_EQ_STR(g.body[2], "{\"a\":\"3\",\"b\":\"4\"}");
}

/* Quoted fields, escaped quotes and line ends across the 256 KiB buffer. */
PB_TEST(csv_across_buffers)
{
    struct rd_opts o = csv_opts();
    size_t cap = 3 << 20, n = 0;
    char *s = malloc(cap);
    PB_CHECK(s != NULL);
    n += (size_t)sprintf(s + n, "k,v\r\n");
    int rows = 0;
    while (n < cap - 200) {
        n += (size_t)sprintf(s + n, "%d,\"x\"\"%d\r\ny,z\"\r\n", rows, rows);
        rows++;
    }
    int fd = tmpfile_with(s, n);
    struct pb_err err = {0};
    struct rd *r = rd_create(&o, fd, true, &err);
    int k = 0, ok = 1;
    struct rd_rec rec;
    struct rd_fatal f;
    while (rd_next(r, &rec, &f) == 1) {
        char want[128];
        snprintf(want, sizeof(want), "{\"k\":\"%d\",\"v\":\"x\\\"%d\\r\\ny,z\"}", k, k);
        if (rec.bad || rec.len != strlen(want) || memcmp(rec.body, want, rec.len) != 0 ||
            rec.line != 2 + 2 * k)
            ok = 0;
        k++;
    }
    PB_EQ_INT(k, rows);
    PB_CHECK(ok);
    /* the digest is the SHA-256 of the bytes */
    char hex[FILE_DIGEST_HEX], want[FILE_DIGEST_HEX];
    PB_EQ_INT(rd_digest(r, hex), 0);
    unsigned char md[32];
    unsigned int ml = 0;
    EVP_Digest(s, n, md, &ml, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        sprintf(want + 2 * i, "%02x", md[i]);
    PB_EQ_STR(hex, want);
    rd_destroy(r);
    close(fd);
    free(s);
}

PB_TEST(jsonl_lines)
{
    struct rd_opts o = {.format = FMT_JSONL, .max_record = 1 << 20};
    struct got g;
    read_str(&o, "{\"a\":1}\r\n\n  \n[1,2]\n{\"b\": tru}\n\"s\"", &g);
    PB_EQ_INT(g.end, 0);
    PB_EQ_INT(g.n, 4);
    PB_EQ_STR(g.body[0], "{\"a\":1}");
    PB_EQ_STR(g.body[1], "[1,2]");
    PB_EQ_INT(g.line[1], 4);
    PB_CONTAINS(g.bad[2], "invalid JSON");
    PB_EQ_INT(g.bad_line[2], 5);
    PB_EQ_INT(g.bad_col[2], 7);
    PB_EQ_STR(g.body[3], "\"s\"");
}

PB_TEST(json_array_split_and_whole)
{
    struct rd_opts o = {.format = FMT_JSON, .max_record = 1 << 20, .split = true};
    struct got g;
    read_str(&o, " [ {\"a\":\"],[\"}, [1,[2]] ,\n 3, \"x\\\"]\" ]\n", &g);
    PB_EQ_INT(g.end, 0);
    PB_EQ_INT(g.n, 4);
    PB_EQ_STR(g.body[0], "{\"a\":\"],[\"}");
    PB_EQ_STR(g.body[1], "[1,[2]]");
    PB_EQ_STR(g.body[2], "3");
    PB_EQ_INT(g.line[2], 2);
    PB_EQ_STR(g.body[3], "\"x\\\"]\"");
    read_str(&o, "[]", &g);
    PB_EQ_INT(g.end, 0);
    PB_EQ_INT(g.n, 0);
    read_str(&o, "{\"whole\": [1, 2]}", &g);
    PB_EQ_INT(g.n, 1);
    PB_EQ_STR(g.body[0], "{\"whole\": [1, 2]}");
    o.split = false;
    read_str(&o, "[1, 2]", &g);
    PB_EQ_INT(g.n, 1);
    PB_EQ_STR(g.body[0], "[1, 2]");
}

PB_TEST(json_problems)
{
    struct rd_opts o = {.format = FMT_JSON, .max_record = 1 << 20, .split = true};
    struct got g;
    read_str(&o, "[1, {bad}, 3,]", &g);
    PB_EQ_INT(g.end, 0);
    PB_EQ_INT(g.n, 4);
    PB_CHECK(g.bad[1] != NULL);
    PB_CONTAINS(g.bad[3], "empty");
    read_str(&o, "[1, 2", &g);
    PB_EQ_INT(g.end, PB_EPARSE);
    PB_CONTAINS(g.f.reason, "not terminated");
    read_str(&o, "[1] x", &g);
    PB_EQ_INT(g.end, PB_EPARSE);
    PB_CONTAINS(g.f.reason, "after the top-level array");
    read_str(&o, "{\n  \"a\": nope\n}", &g);
    PB_EQ_INT(g.end, PB_EPARSE);
    PB_EQ_INT(g.f.line, 2);
    PB_EQ_INT(g.f.col, 8);
    read_str(&o, "", &g);
    PB_EQ_INT(g.end, PB_EPARSE);
}

static struct rd_opts xml_opts(const char *record)
{
    return (struct rd_opts){
        .format = FMT_XML, .max_record = 1 << 20, .record = record, .max_depth = 64};
}

PB_TEST(xml_records_to_json)
{
    struct rd_opts o = xml_opts("/orders/order");
    struct got g;
    read_str(&o,
             "<?xml version=\"1.0\"?>\n"
             "<orders xmlns:x=\"urn:x\">\n"
             "  <order id=\"1\" x:ref=\"r&amp;1\">\n"
             "    <sku>A</sku><sku>B</sku>\n"
             "    <note><![CDATA[<b>bold</b>]]></note>\n"
             "    <empty/>\n"
             "    <qty unit=\"pc\">3</qty>\n"
             "  </order>\n"
             "  <other><order>no</order></other>\n"
             "  <order>plain &lt;text&gt;</order>\n"
             "  <order><line><sku>C</sku></line></order>\n"
             "</orders>\n",
             &g);
    PB_EQ_INT(g.end, 0);
    PB_EQ_INT(g.n, 3);
    PB_EQ_STR(g.body[0], "{\"@id\":\"1\",\"@x:ref\":\"r&1\",\"sku\":[\"A\",\"B\"],"
                         "\"note\":\"<b>bold</b>\",\"empty\":\"\",\"qty\":{\"@unit\":\"pc\","
                         "\"#text\":\"3\"}}");
    PB_EQ_INT(g.line[0], 3);
    PB_EQ_STR(g.body[1], "\"plain <text>\"");
    PB_EQ_STR(g.body[2], "{\"line\":{\"sku\":\"C\"}}");
    char *arr[] = {"line"};
    struct pb_strlist al = {1, arr};
    o.arrays = &al;
    read_str(&o, "<orders><order><line><sku>C</sku></line></order></orders>", &g);
    PB_EQ_STR(g.body[0], "{\"line\":[{\"sku\":\"C\"}]}");
}

PB_TEST(xml_hostile_and_malformed)
{
    struct rd_opts o = xml_opts("/a/b");
    struct got g;
    read_str(&o, "<?xml version=\"1.0\"?>\n<!DOCTYPE a [<!ENTITY e \"boom\">]>\n<a><b>&e;</b></a>",
             &g);
    PB_EQ_INT(g.end, PB_EPARSE);
    PB_CONTAINS(g.f.reason, "DOCTYPE");
    PB_EQ_INT(g.n, 0);
    /* libxml2 parses ahead: the error may come before the record before it */
    read_str(&o, "<a>\n<b>1</b>\n<b>2</c>\n</a>", &g);
    PB_EQ_INT(g.end, PB_EPARSE);
    PB_EQ_INT(g.f.line, 3);
    read_str(&o, "<a><b>&undefined;</b></a>", &g);
    PB_EQ_INT(g.end, PB_EPARSE);
    o.max_depth = 3;
    read_str(&o, "<a><b><c><d>deep</d></c></b></a>", &g);
    PB_EQ_INT(g.end, PB_EPARSE);
    PB_CONTAINS(g.f.reason, "max_depth");
    o.max_depth = 64;
    o.max_record = 1024;
    char big[4096];
    int n = snprintf(big, sizeof(big), "<a><b>");
    for (int i = 0; i < 200; i++)
        n += snprintf(big + n, sizeof(big) - (size_t)n, "<c>xxxxxxxx</c>");
    snprintf(big + n, sizeof(big) - (size_t)n, "</b><b>ok</b></a>");
    read_str(&o, big, &g);
    PB_EQ_INT(g.end, 0);
    PB_EQ_INT(g.n, 2);
    PB_CONTAINS(g.bad[0], "max_record");
    PB_EQ_STR(g.body[1], "\"ok\"");
}

PB_TEST(raw_whole_file)
{
    struct rd_opts o = {.format = FMT_RAW, .max_record = 1024};
    struct got g;
    read_all(&o, "\x00\x01zz", 4, &g);
    PB_EQ_INT(g.n, 1);
    PB_EQ_INT(g.end, 0);
    o.max_record = 2;
    read_all(&o, "abcd", 4, &g);
    PB_EQ_INT(g.end, PB_EPARSE);
    PB_CONTAINS(g.f.reason, "max_record");
}

PB_TEST(ready_by_age_or_by_being_quiet)
{
    int64_t w;
    /* changed 2 s ago, min_age 1 s: ready */
    PB_CHECK(file_ready(10000, 8000, 10000, 1000, 0, &w));
    PB_EQ_INT(w, 0);
    /* changed 0.3 s ago, first seen now: 0.7 s to go */
    PB_CHECK(!file_ready(10000, 9700, 10000, 1000, 0, &w));
    PB_EQ_INT(w, 700);
    /* a time in the future: ready once quiet for min_age while watched */
    PB_CHECK(!file_ready(10000, 99999, 9500, 1000, 0, &w));
    PB_EQ_INT(w, 500);
    PB_CHECK(file_ready(10600, 99999, 9500, 1000, 0, &w));
    /* another clock: changed 30 s ago by it, with a minute of skew: not yet by age */
    PB_CHECK(!file_ready(100000, 70000, 100000, 1000, 60000, &w));
    PB_EQ_INT(w, 1000);
    PB_CHECK(file_ready(100000, 30000, 100000, 1000, 60000, &w));
    /* no time known */
    PB_CHECK(!file_ready(5000, 0, 4800, 1000, 0, &w));
    PB_EQ_INT(w, 800);
    PB_CHECK(file_ready(5000, 0, 5000, 0, 0, &w));
}

int main(void)
{
    return pb_test_main();
}
