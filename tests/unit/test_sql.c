/* test_sql.c - the pure parts of the sql connectors: values as JSON with
 * exact types, DSNs and their redaction, named parameters, the classes of
 * database errors, and the pgoutput decoder of postgres_cdc. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pb_test.h"
#include "plugins/inputs/postgres_cdc/pgoutput.h"
#include "plugins/inputs/sql/sql_common.h"

static const struct sql_fmt fmt_str = {.decimal_number = false};
static const struct sql_fmt fmt_num = {.decimal_number = true};

/* The JSON of a PostgreSQL text value of type oid (NULL when p is NULL). */
static char *pgjson(unsigned oid, const char *p, const struct sql_fmt *f)
{
    static char out[4096];
    struct sql_buf b = {0};
    struct sql_cell c = sql_pg_cell(oid, p, p ? strlen(p) : 0);
    const char *why = NULL;
    if (sql_cell_json(&b, &c, f, &why) != 0)
        snprintf(out, sizeof(out), "ERR:%s", why);
    else
        snprintf(out, sizeof(out), "%s", sqlb_text(&b));
    sqlb_free(&b);
    return out;
}

PB_TEST(driver_names_and_aliases)
{
    PB_EQ_INT(sql_driver_index("sqlite"), SQL_SQLITE);
    PB_EQ_INT(sql_driver_index("postgres"), SQL_POSTGRES);
    PB_EQ_INT(sql_driver_index("postgresql"), SQL_POSTGRES);
    PB_EQ_INT(sql_driver_index("mysql"), SQL_MYSQL);
    PB_EQ_INT(sql_driver_index("mariadb"), SQL_MYSQL);
    PB_EQ_INT(sql_driver_index(NULL), -1);
    PB_EQ_INT(sql_driver_index("oracle"), -2);
}

PB_TEST(pg_values_keep_their_exact_types)
{
    static const struct {
        unsigned oid;
        const char *in;
        int dec_number;
        const char *want;
    } cases[] = {
        {16, "t", 0, "true"},
        {16, "f", 0, "false"},
        {23, "-42", 0, "-42"},
        {20, "9007199254740992", 0, "9007199254740992"},
        {20, "9007199254740993", 0, "\"9007199254740993\""},
        {20, "-9223372036854775808", 0, "\"-9223372036854775808\""},
        {20, "9007199254740993", 1, "9007199254740993"},
        {1700, "12345678901234567890.1234567890", 0, "\"12345678901234567890.1234567890\""},
        {1700, "0.10", 1, "0.10"},
        {1700, "NaN", 1, "\"NaN\""},
        {701, "0.1", 0, "0.1"},
        {701, "1e+100", 0, "1e+100"},
        {701, "Infinity", 0, "\"Infinity\""},
        {700, "-0", 0, "-0"},
        {25, "a \"b\"\n\x01", 0, "\"a \\\"b\\\"\\n\\u0001\""},
        {17, "\\x000102ff", 0, "\"AAEC/w==\""},
        {17, "\\x", 0, "\"\""},
        {3802, "{\"a\": [1, 2]}", 0, "{\"a\": [1, 2]}"},
        {1184, "2024-05-01 12:00:00.5+00", 0, "\"2024-05-01T12:00:00.5Z\""},
        {1184, "2024-05-01 12:00:00+05:30", 0, "\"2024-05-01T12:00:00+05:30\""},
        {1184, "2024-05-01 12:00:00-08", 0, "\"2024-05-01T12:00:00-08:00\""},
        {1184, "infinity", 0, "\"infinity\""},
        {1114, "2024-05-01 12:00:00", 0, "\"2024-05-01T12:00:00\""},
        {1082, "2024-05-01", 0, "\"2024-05-01\""},
        {1007, "{1,2,NULL}", 0, "[1,2,null]"},
        {1009, "{a,\"b c\",\"d\\\"e\",NULL,\"NULL\"}", 0,
         "[\"a\",\"b c\",\"d\\\"e\",null,\"NULL\"]"},
        {1231, "{{1.5,2},{3,4}}", 0, "[[\"1.5\",\"2\"],[\"3\",\"4\"]]"},
        {1007, "[0:1]={7,8}", 0, "[7,8]"},
        {1007, "{}", 0, "[]"},
        {2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", 0,
         "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""},
        {23, NULL, 0, "null"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *got =
            pgjson(cases[i].oid, cases[i].in, cases[i].dec_number ? &fmt_num : &fmt_str);
        if (strcmp(got, cases[i].want) != 0)
            fprintf(stderr, "  case %zu (oid %u, %s)\n", i, cases[i].oid, cases[i].in);
        PB_EQ_STR(got, cases[i].want);
    }
    /* text that is not UTF-8 cannot be carried */
    PB_CHECK(strncmp(pgjson(25, "\xff\xfe", &fmt_str), "ERR:", 4) == 0);
}

PB_TEST(numbers_are_checked_strictly)
{
    PB_CHECK(sql_int_fits_double("9007199254740992", 16));
    PB_CHECK(sql_int_fits_double("-9007199254740992", 17));
    PB_CHECK(!sql_int_fits_double("9007199254740993", 16));
    PB_CHECK(sql_int_fits_double("0000000000000000000001", 22));
    PB_CHECK(!sql_int_fits_double("", 0));
    PB_CHECK(!sql_int_fits_double("12a", 3));
    PB_CHECK(sql_is_number("-1.5e3", 6));
    PB_CHECK(!sql_is_number("01", 2));
    PB_CHECK(!sql_is_number(".5", 2));
    PB_CHECK(!sql_is_number("1.", 2));
    PB_CHECK(!sql_is_number("NaN", 3));
    char buf[40];
    sql_double_text(0.1, buf, sizeof(buf));
    PB_EQ_STR(buf, "0.1");
    sql_double_text(1.0 / 3, buf, sizeof(buf));
    PB_EQ_STR(buf, "0.3333333333333333");
    sql_double_text(1e300 * 10, buf, sizeof(buf));
    PB_EQ_STR(buf, "1e+301");
}

PB_TEST(cursor_values_keep_their_kind)
{
    struct sql_cval v;
    struct sql_cell c = sql_pg_cell(20, "12", 2);
    PB_EQ_INT(sql_cval_from_cell(&v, &c), 0);
    PB_EQ_INT(v.kind, SQLC_NUM);
    PB_EQ_STR(v.text, "12");
    sql_cval_free(&v);
    c = sql_pg_cell(1184, "2024-05-01 12:00:00+00", 22);
    PB_EQ_INT(sql_cval_from_cell(&v, &c), 0);
    PB_EQ_INT(v.kind, SQLC_TEXT);
    PB_EQ_STR(v.text, "2024-05-01 12:00:00+00"); /* as the database wrote it */
    sql_cval_free(&v);
    c = sql_pg_cell(17, "\\x00ff", 6);
    PB_EQ_INT(sql_cval_from_cell(&v, &c), 0);
    PB_EQ_INT(v.kind, SQLC_BYTES);
    PB_EQ_INT(v.len, 2);
    PB_EQ_INT((unsigned char)v.text[1], 0xff);
    sql_cval_free(&v);
}

PB_TEST(dsns_parse_and_never_show_the_password)
{
    struct sql_target t;
    struct pb_err err = {0};
    PB_EQ_INT(sql_target_init(&t, -1, "postgres://erp:s3cr%40t@db.example:6543/erp?sslmode=require",
                              &err),
              0);
    PB_EQ_INT(t.driver, SQL_POSTGRES);
    PB_EQ_STR(t.host, "db.example");
    PB_EQ_INT(t.port, 6543);
    PB_CHECK(strstr(t.shown, "s3cr") == NULL);
    PB_EQ_STR(t.shown, "postgres://erp@db.example:6543/erp");
    bool has_pw = false;
    for (size_t i = 0; i < t.nkw; i++)
        if (strcmp(t.kw[i], "password") == 0)
            has_pw = strcmp(t.val[i], "s3cr@t") == 0;
    PB_CHECK(has_pw);
    sql_target_cleanup(&t);

    PB_EQ_INT(sql_target_init(&t, SQL_POSTGRES, "host=10.0.0.5 dbname=x user=u password=pw", &err),
              0);
    PB_EQ_STR(t.host, "10.0.0.5");
    PB_CHECK(strstr(t.shown, "pw") == NULL);
    sql_target_cleanup(&t);

    /* a bad string: the error never repeats it */
    PB_CHECK(sql_target_init(&t, SQL_POSTGRES, "host=db password='unterminated", &err) != 0);
    PB_CHECK(strstr(err.msg, "unterminated") == NULL);
    sql_target_cleanup(&t);
    PB_CHECK(sql_target_init(&t, SQL_POSTGRES, "host=/var/run/postgresql dbname=x", &err) != 0);
    PB_CHECK(strstr(err.msg, "Unix socket") != NULL);
    sql_target_cleanup(&t);
    PB_CHECK(sql_target_init(&t, SQL_POSTGRES, "dbname=x", &err) != 0);
    sql_target_cleanup(&t);
    PB_CHECK(sql_target_init(&t, SQL_POSTGRES, "host=a,b dbname=x", &err) != 0);
    sql_target_cleanup(&t);

    PB_EQ_INT(sql_target_init(&t, -1, "mysql://wms:p%3Aw@[::1]:3307/wms?ssl-mode=required", &err),
              0);
    PB_EQ_INT(t.driver, SQL_MYSQL);
    PB_EQ_STR(t.host, "::1");
    PB_EQ_INT(t.port, 3307);
    PB_EQ_STR(t.user, "wms");
    PB_EQ_STR(t.password, "p:w");
    PB_EQ_STR(t.db, "wms");
    PB_EQ_INT(t.ssl_mode, 1);
    PB_CHECK(strstr(t.shown, "p:w") == NULL && strstr(t.shown, "p%3Aw") == NULL);
    sql_target_cleanup(&t);
    PB_CHECK(sql_target_init(&t, -1, "mysql://u@h/db?ssl-mode=verify-ca", &err) != 0);
    sql_target_cleanup(&t);
    PB_CHECK(sql_target_init(&t, -1, "mysql://u@h/db?frobnicate=1", &err) != 0);
    sql_target_cleanup(&t);
    /* The authority is read as every connector's URL is (pb_url.h). */
    PB_EQ_INT(sql_target_init(&t, -1, "mysql://app:p@ss@db.internal/shop", &err), 0);
    PB_EQ_STR(t.password, "p@ss");
    PB_EQ_STR(t.host, "db.internal");
    PB_EQ_INT(t.port, 3306);
    sql_target_cleanup(&t);
    PB_CHECK(sql_target_init(&t, -1, "mysql://u:pw-secret@/db", &err) != 0);
    PB_CHECK(strstr(err.msg, "no host (mysql://") != NULL);
    PB_CHECK(strstr(err.msg, "pw-secret") == NULL);
    sql_target_cleanup(&t);
    PB_CHECK(sql_target_init(&t, -1, "mysql://u:p%zz@h/db", &err) != 0);
    PB_CHECK(strstr(err.msg, "bad %-escape in the password") != NULL);
    sql_target_cleanup(&t);

    PB_EQ_INT(sql_target_init(&t, -1, "sqlite:/tmp/x.db", &err), 0);
    PB_EQ_INT(t.driver, SQL_SQLITE);
    PB_EQ_STR(t.path, "/tmp/x.db");
    sql_target_cleanup(&t);
    PB_CHECK(sql_target_init(&t, -1, "/tmp/x.db", &err) != 0); /* which driver? */
    sql_target_cleanup(&t);
    PB_CHECK(sql_target_init(&t, SQL_MYSQL, "postgres://u@h/db", &err) != 0);
    sql_target_cleanup(&t);
}

PB_TEST(named_parameters_skip_literals_comments_and_casts)
{
    const char *names[] = {"updated_at", "id"};
    struct sql_params ps;
    struct pb_err err = {0};
    const char *q = "SELECT ':id', \"x:id\", a::text, $$ :id $$ /* :id */ -- :id\n"
                    "FROM t WHERE (updated_at, id) > (:updated_at, :id) AND id <> :id";
    PB_EQ_INT(sql_params_find(&ps, SQL_POSTGRES, q, names, 2, &err), 0);
    PB_EQ_INT(ps.n, 3);
    PB_EQ_INT(ps.nbind, 2);
    char *r = sql_params_render(&ps, q, SQL_POSTGRES, NULL, NULL);
    PB_CHECK(r && strstr(r, "> ($1, $2) AND id <> $2") != NULL);
    PB_CHECK(r && strstr(r, "':id', \"x:id\", a::text, $$ :id $$ /* :id */ -- :id") != NULL);
    free(r);
    sql_params_free(&ps);

    /* numbered in order of first use */
    q = "SELECT * FROM t WHERE id > :id AND u >= :updated_at";
    PB_EQ_INT(sql_params_find(&ps, SQL_SQLITE, q, names, 2, &err), 0);
    r = sql_params_render(&ps, q, SQL_SQLITE, NULL, NULL);
    PB_EQ_STR(r, "SELECT * FROM t WHERE id > ?1 AND u >= ?2");
    PB_EQ_INT(ps.bind[0], 1);
    PB_EQ_INT(ps.bind[1], 0);
    free(r);
    sql_params_free(&ps);

    /* MySQL: values as literals, text escaped; a backslash escapes in its strings */
    q = "SELECT 'it\\'s :id' FROM t WHERE (u, id) > (:updated_at, :id)";
    PB_EQ_INT(sql_params_find(&ps, SQL_MYSQL, q, names, 2, &err), 0);
    PB_EQ_INT(ps.n, 2);
    struct sql_cval vals[2] = {{.kind = SQLC_TEXT, .text = "x' OR 1=1 --\\", .len = 13},
                               {.kind = SQLC_NUM, .text = "42", .len = 2}};
    r = sql_params_render(&ps, q, SQL_MYSQL, NULL, vals);
    PB_EQ_STR(r, "SELECT 'it\\'s :id' FROM t WHERE (u, id) > ('x\\' OR 1=1 --\\\\', 42)");
    free(r);
    sql_params_free(&ps);

    PB_CHECK(sql_params_find(&ps, SQL_POSTGRES, "SELECT :nope", names, 2, &err) != 0);
    PB_CHECK(strstr(err.msg, ":nope") != NULL);
}

PB_TEST(database_errors_are_classified)
{
    PB_EQ_INT(sql_pg_kind("23505"), SQL_ERR_ROW);
    PB_EQ_INT(sql_pg_kind("22003"), SQL_ERR_ROW);
    PB_EQ_INT(sql_pg_kind("40P01"), SQL_ERR_TRANSIENT);
    PB_EQ_INT(sql_pg_kind("40001"), SQL_ERR_TRANSIENT);
    PB_EQ_INT(sql_pg_kind("57014"), SQL_ERR_TRANSIENT);
    PB_EQ_INT(sql_pg_kind("08006"), SQL_ERR_CONN);
    PB_EQ_INT(sql_pg_kind("57P01"), SQL_ERR_CONN);
    PB_EQ_INT(sql_pg_kind(""), SQL_ERR_CONN);
    PB_EQ_INT(sql_pg_kind("42P01"), SQL_ERR_OTHER);
    PB_EQ_INT(sql_my_kind(1062), SQL_ERR_ROW);
    PB_EQ_INT(sql_my_kind(1452), SQL_ERR_ROW);
    PB_EQ_INT(sql_my_kind(1213), SQL_ERR_TRANSIENT);
    PB_EQ_INT(sql_my_kind(2013), SQL_ERR_CONN);
    PB_EQ_INT(sql_my_kind(1146), SQL_ERR_OTHER);
    PB_EQ_INT(sql_lite_kind(SQLITE_CONSTRAINT_UNIQUE), SQL_ERR_ROW);
    PB_EQ_INT(sql_lite_kind(SQLITE_BUSY), SQL_ERR_TRANSIENT);
    PB_EQ_INT(sql_lite_kind(SQLITE_ERROR), SQL_ERR_OTHER);
}

/* an empty buffer's text is "", not what the allocator left there */
PB_TEST(an_empty_buffer_is_an_empty_string)
{
    for (int i = 0; i < 50; i++) {
        char *junk = malloc(256);
        memset(junk, 0xb7, 256);
        free(junk);
        struct sql_buf b = {0};
        PB_EQ_STR(sqlb_text(&b), "");
        sqlb_free(&b);
    }
}

/* adding nothing from nowhere (a zero-length value) is no error */
PB_TEST(adding_nothing_is_allowed)
{
    struct sql_buf b = {0};
    sqlb_add(&b, NULL, 0);
    sqlb_adds(&b, "x");
    sqlb_add(&b, NULL, 0);
    PB_EQ_STR(sqlb_text(&b), "x");
    sqlb_free(&b);
}

PB_TEST(identifiers_are_quoted_part_by_part)
{
    struct sql_buf b = {0};
    sql_quote_ident(&b, SQL_POSTGRES, "erp.order\"s");
    PB_EQ_STR(sqlb_text(&b), "\"erp\".\"order\"\"s\"");
    sqlb_reset(&b);
    sql_quote_ident(&b, SQL_MYSQL, "o`x");
    PB_EQ_STR(sqlb_text(&b), "`o``x`");
    sqlb_free(&b);
}

/* ---- pgoutput ---------------------------------------------------------------------------------
 */

struct wb {
    uint8_t p[4096];
    size_t n;
};

static void w8(struct wb *w, uint8_t v)
{
    w->p[w->n++] = v;
}
static void w16(struct wb *w, uint16_t v)
{
    w8(w, (uint8_t)(v >> 8));
    w8(w, (uint8_t)v);
}
static void w32(struct wb *w, uint32_t v)
{
    w16(w, (uint16_t)(v >> 16));
    w16(w, (uint16_t)v);
}
static void w64(struct wb *w, uint64_t v)
{
    w32(w, (uint32_t)(v >> 32));
    w32(w, (uint32_t)v);
}
static void wstr(struct wb *w, const char *s)
{
    memcpy(w->p + w->n, s, strlen(s) + 1);
    w->n += strlen(s) + 1;
}
static void wtext(struct wb *w, const char *s)
{
    if (!s) {
        w8(w, 'n');
        return;
    }
    w8(w, 't');
    w32(w, (uint32_t)strlen(s));
    memcpy(w->p + w->n, s, strlen(s));
    w->n += strlen(s);
}

static void relation_msg(struct wb *w)
{
    w->n = 0;
    w8(w, 'R');
    w32(w, 16384);
    wstr(w, "public");
    wstr(w, "orders");
    w8(w, 'd');
    w16(w, 3);
    w8(w, 1), wstr(w, "id"), w32(w, 20), w32(w, (uint32_t)-1);
    w8(w, 0), wstr(w, "total"), w32(w, 1700), w32(w, (uint32_t)-1);
    w8(w, 0), wstr(w, "note"), w32(w, 25), w32(w, (uint32_t)-1);
}

PB_TEST(pgoutput_decodes_a_transaction)
{
    struct pgo_decoder d = {0};
    struct pgo_msg m;
    struct wb w;
    char err[200];

    w.n = 0;
    w8(&w, 'B');
    w64(&w, 0x16B3748);
    w64(&w, 767225600000000LL); /* 2024-04-23T22:13:20Z */
    w32(&w, 731);
    PB_EQ_INT(pgo_decode(&d, w.p, w.n, &m, err, sizeof(err)), 0);
    PB_EQ_INT(m.kind, 'B');
    PB_EQ_INT(m.final_lsn, 0x16B3748);
    PB_EQ_INT(m.xid, 731);

    /* a change before its relation is an error, not a crash */
    w.n = 0;
    w8(&w, 'I');
    w32(&w, 16384);
    PB_CHECK(pgo_decode(&d, w.p, w.n, &m, err, sizeof(err)) != 0);

    relation_msg(&w);
    PB_EQ_INT(pgo_decode(&d, w.p, w.n, &m, err, sizeof(err)), 0);
    PB_EQ_INT(m.kind, 'R');
    PB_CHECK(m.rel && m.rel->ncols == 3 && m.rel->cols[0].key && !m.rel->cols[1].key);

    w.n = 0;
    w8(&w, 'U');
    w32(&w, 16384);
    w8(&w, 'O');
    w16(&w, 3), wtext(&w, "9007199254740993"), wtext(&w, "1.10"), wtext(&w, "old");
    w8(&w, 'N');
    w16(&w, 3), wtext(&w, "9007199254740993"), wtext(&w, "2.20"), w8(&w, 'u');
    PB_EQ_INT(pgo_decode(&d, w.p, w.n, &m, err, sizeof(err)), 0);
    PB_EQ_INT(m.kind, 'U');
    PB_EQ_INT(m.old_kind, 'O');
    struct sql_buf b = {0};
    const char *why = NULL;
    struct pgo_change_ctx cx = {.lsn = 0x16B3700,
                                .commit_lsn = 0x16B3748,
                                .commit_time = 767225600000000LL,
                                .xid = 731,
                                .fmt = &fmt_str};
    PB_EQ_INT(pgo_change_json(&b, &m, m.rel, &cx, &why), 0);
    PB_EQ_STR(sqlb_text(&b),
              "{\"op\":\"update\",\"schema\":\"public\",\"table\":\"orders\","
              "\"key\":{\"id\":\"9007199254740993\"},"
              "\"before\":{\"id\":\"9007199254740993\",\"total\":\"1.10\",\"note\":\"old\"},"
              "\"after\":{\"id\":\"9007199254740993\",\"total\":\"2.20\"},"
              "\"lsn\":\"0/16B3700\",\"commit_lsn\":\"0/16B3748\","
              "\"commit_time\":\"2024-04-23T22:13:20.000000Z\",\"xid\":731}");
    sqlb_free(&b);

    w.n = 0;
    w8(&w, 'D');
    w32(&w, 16384);
    w8(&w, 'K');
    w16(&w, 3), wtext(&w, "5"), w8(&w, 'n'), w8(&w, 'n');
    PB_EQ_INT(pgo_decode(&d, w.p, w.n, &m, err, sizeof(err)), 0);
    PB_EQ_INT(pgo_change_json(&b, &m, m.rel, &cx, &why), 0);
    PB_CHECK(strstr(sqlb_text(&b), "\"op\":\"delete\"") != NULL);
    PB_CHECK(strstr(sqlb_text(&b), "\"key\":{\"id\":5},\"before\":{\"id\":5},\"after\":null") !=
             NULL);
    sqlb_free(&b);

    /* a tuple with the wrong number of columns is refused */
    w.n = 0;
    w8(&w, 'I');
    w32(&w, 16384);
    w8(&w, 'N');
    w16(&w, 2), wtext(&w, "1"), wtext(&w, "2");
    PB_CHECK(pgo_decode(&d, w.p, w.n, &m, err, sizeof(err)) != 0);
    /* a truncated message is refused at every length */
    w.n = 0;
    w8(&w, 'I');
    w32(&w, 16384);
    w8(&w, 'N');
    w16(&w, 3), wtext(&w, "1"), wtext(&w, "2.5"), wtext(&w, "x");
    for (size_t cut = 1; cut < w.n; cut++)
        PB_CHECK(pgo_decode(&d, w.p, cut, &m, err, sizeof(err)) != 0);
    PB_EQ_INT(pgo_decode(&d, w.p, w.n, &m, err, sizeof(err)), 0);

    w.n = 0;
    w8(&w, 'C');
    w8(&w, 0);
    w64(&w, 0x16B3748);
    w64(&w, 0x16B3778);
    w64(&w, 767225600000000LL);
    PB_EQ_INT(pgo_decode(&d, w.p, w.n, &m, err, sizeof(err)), 0);
    PB_EQ_INT(m.kind, 'C');
    PB_EQ_INT(m.end_lsn, 0x16B3778);

    w.n = 0;
    w8(&w, 'T');
    w32(&w, 1);
    w8(&w, 0);
    w32(&w, 16384);
    PB_EQ_INT(pgo_decode(&d, w.p, w.n, &m, err, sizeof(err)), 0);
    PB_EQ_INT(m.nrels, 1);
    PB_EQ_INT(m.relids[0], 16384);

    /* REPLICA IDENTITY FULL flags every column: the primary key is set */
    relation_msg(&w);
    w.p[1 + 4 + 7 + 7] = 'f';
    PB_EQ_INT(pgo_decode(&d, w.p, w.n, &m, err, sizeof(err)), 0);
    const char *pk[] = {"id"};
    pgo_rel_set_key(&d.rels, 16384, pk, 1);
    PB_CHECK(m.rel->cols[0].key && !m.rel->cols[2].key);
    pgo_decoder_free(&d);
}

PB_TEST(replication_framing)
{
    struct wb w = {.n = 0};
    struct pgo_copy c;
    char err[100];
    w8(&w, 'k');
    w64(&w, 0x100000010ULL);
    w64(&w, 5);
    w8(&w, 1);
    PB_EQ_INT(pgo_copy_parse(w.p, w.n, &c, err, sizeof(err)), 0);
    PB_EQ_INT(c.kind, 'k');
    PB_EQ_INT(c.wal_end, 0x100000010ULL);
    PB_CHECK(c.reply);
    PB_CHECK(pgo_copy_parse(w.p, w.n - 1, &c, err, sizeof(err)) != 0);
    w.n = 0;
    w8(&w, 'w');
    w64(&w, 1), w64(&w, 2), w64(&w, 3);
    w8(&w, 'O');
    PB_EQ_INT(pgo_copy_parse(w.p, w.n, &c, err, sizeof(err)), 0);
    PB_EQ_INT(c.len, 1);
    PB_EQ_INT(c.data[0], 'O');
    w.p[0] = 'x';
    PB_CHECK(pgo_copy_parse(w.p, w.n, &c, err, sizeof(err)) != 0);

    uint8_t st[34];
    pgo_status_update(st, 0x0102030405060708ULL, 0x10, 0x10, 99, false);
    PB_EQ_INT(st[0], 'r');
    PB_EQ_INT(st[1], 0x01);
    PB_EQ_INT(st[8], 0x08);
    PB_EQ_INT(st[16], 0x10);
    PB_EQ_INT(st[32], 99);
    PB_EQ_INT(st[33], 0);

    char t[40];
    uint64_t lsn;
    pgo_lsn_text(0x16B3748ULL | (0x2AULL << 32), t, sizeof(t));
    PB_EQ_STR(t, "2A/16B3748");
    PB_EQ_INT(pgo_lsn_parse("2A/16B3748", &lsn), 0);
    PB_EQ_INT(lsn, 0x16B3748ULL | (0x2AULL << 32));
    PB_CHECK(pgo_lsn_parse("2A/16B3748x", &lsn) != 0);
    PB_CHECK(pgo_lsn_parse("nope", &lsn) != 0);
    pgo_time_text(0, t, sizeof(t));
    PB_EQ_STR(t, "2000-01-01T00:00:00.000000Z");
    pgo_time_text(-1, t, sizeof(t));
    PB_EQ_STR(t, "1999-12-31T23:59:59.999999Z");
}

int main(void)
{
    return pb_test_main();
}
