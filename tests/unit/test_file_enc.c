/* test_file_enc.c - JSON lines and CSV rows of the file and sftp outputs:
 * values exactly as in the payload, RFC 4180 quoting, refusals. */
#include <string.h>

#include "pb_test.h"
#include "plugins/outputs/file/file_enc.h"

PB_TEST(jsonl_one_line)
{
    struct enc_buf b = {0};
    char why[200];
    PB_EQ_INT(enc_jsonl(&b, "{\n  \"a\": \"x\\ny\",\r\n  \"n\": 1.50\n}", 31, why, sizeof(why)), 0);
    PB_EQ_STR(b.p, "{   \"a\": \"x\\ny\",    \"n\": 1.50 }\n");
    PB_EQ_INT(enc_jsonl(&b, "{bad", 4, why, sizeof(why)), PB_EPARSE);
    PB_CONTAINS(why, "not JSON");
    enc_buf_free(&b);
}

PB_TEST(csv_rows_exact)
{
    char *cols[] = {"id", "name", "n", "obj", "flag", "gone"};
    struct pb_strlist cl = {6, cols};
    struct enc_csv c = {.delimiter = ',', .quote = '"', .columns = &cl};
    struct enc_buf b = {0};
    char why[200];
    PB_EQ_INT(enc_csv_header(&c, &b), 0);
    const char *p = "{\"name\":\"A, \\\"B\\\" \\u00e9\\ud83d\\ude00\\n\",\"id\":7,\"n\":1.50e3,"
                    "\"obj\":{\"k\":[1, 2]},\"flag\":true,\"gone\":null}";
    PB_EQ_INT(enc_csv_row(&c, &b, p, strlen(p), why, sizeof(why)), 0);
    PB_EQ_STR(
        b.p,
        "id,name,n,obj,flag,gone\r\n"
        "7,\"A, \"\"B\"\" \xc3\xa9\xf0\x9f\x98\x80\n\",1.50e3,\"{\"\"k\"\":[1, 2]}\",true,\r\n");
    size_t before = b.n;
    const char *extra = "{\"id\":1,\"other\":2}";
    PB_EQ_INT(enc_csv_row(&c, &b, extra, strlen(extra), why, sizeof(why)), PB_EPARSE);
    PB_CONTAINS(why, "\"other\" is not a column");
    PB_EQ_INT(b.n, before);
    PB_EQ_INT(enc_csv_row(&c, &b, "[1]", 3, why, sizeof(why)), PB_EPARSE);
    PB_EQ_INT(enc_csv_row(&c, &b, "{\"id\":2}", 8, why, sizeof(why)), 0);
    PB_EQ_STR(b.p + before, "2,,,,,\r\n");
    enc_buf_free(&b);
}

PB_TEST(csv_columns_from_first_record_and_header)
{
    struct pb_strlist l;
    char why[200];
    PB_EQ_INT(enc_csv_keys("{\"b\":1,\"a\":{\"x\":1}}", 19, &l, why, sizeof(why)), 0);
    PB_EQ_INT(l.n, 2);
    PB_EQ_STR(l.items[0], "b");
    PB_EQ_STR(l.items[1], "a");
    pb_strlist_free(&l);
    struct enc_csv c = {.delimiter = ';', .quote = '\''};
    PB_EQ_INT(enc_csv_parse_header(&c, "id;'a;b';'it''s'\r", 17, &l), 0);
    PB_EQ_INT(l.n, 3);
    PB_EQ_STR(l.items[1], "a;b");
    PB_EQ_STR(l.items[2], "it's");
    pb_strlist_free(&l);
}

int main(void)
{
    return pb_test_main();
}
