/* test_smtp_msg.c - the mail of the smtp output: addresses, headers that
 * cannot be injected into, RFC 2047, quoted-printable, the Message-ID. */
#include <stdlib.h>
#include <string.h>

#include "pb_test.h"
#include "plugins/outputs/smtp/smtp_msg.h"

PB_TEST(addresses)
{
    struct smtp_addr a[8];
    size_t n = 0;
    char why[200];
    PB_EQ_INT(smtp_parse_addrs("ann@example.com, \"Doe, J\" <j.doe@example.org>,, Zoë <z@x.io>", a,
                               &n, 8, why, sizeof(why)),
              0);
    PB_EQ_INT(n, 3);
    PB_EQ_STR(a[0].addr, "ann@example.com");
    PB_EQ_STR(a[0].header, "ann@example.com");
    PB_EQ_STR(a[1].addr, "j.doe@example.org");
    PB_EQ_STR(a[1].header, "\"Doe, J\" <j.doe@example.org>");
    PB_EQ_STR(a[2].addr, "z@x.io");
    PB_EQ_STR(a[2].header, "=?UTF-8?B?Wm/Dqw==?= <z@x.io>");
    n = 0;
    PB_EQ_INT(smtp_parse_addrs("not an address", a, &n, 8, why, sizeof(why)), -1);
    PB_CONTAINS(why, "not an e-mail address");
    PB_EQ_INT(smtp_parse_addrs("a@b.c\r\nBcc: evil@x.y", a, &n, 8, why, sizeof(why)), -1);
    PB_CONTAINS(why, "line break");
    PB_EQ_INT(smtp_parse_addrs("a@b.c, d@e.f", a, &n, 1, why, sizeof(why)), -1);
    PB_EQ_INT(smtp_parse_addrs("x@@y.z", a, &n, 8, why, sizeof(why)), -1);
}

PB_TEST(quoted_printable)
{
    char *q;
    size_t n;
    const char *s = "a=b  \nline two ends with a tab\t\nZoë";
    PB_EQ_INT(smtp_qp(s, strlen(s), &q, &n), 0);
    PB_EQ_STR(q, "a=3Db =20\r\nline two ends with a tab=09\r\nZo=C3=AB");
    free(q);
    char longl[200];
    memset(longl, 'x', 199);
    longl[199] = 0;
    PB_EQ_INT(smtp_qp(longl, 199, &q, &n), 0);
    PB_CHECK(strstr(q, "=\r\n") != NULL);
    char *line = q;
    int ok = 1;
    for (char *p = q; *p; p++)
        if (*p == '\n') {
            if (p - line > 77)
                ok = 0;
            line = p + 1;
        }
    PB_CHECK(ok);
    free(q);
}

PB_TEST(message_and_message_id)
{
    struct smtp_addr from[1], to[2];
    size_t nf = 0, nt = 0;
    char why[200];
    PB_EQ_INT(smtp_parse_addrs("Shop <orders@shop.example>", from, &nf, 1, why, sizeof(why)), 0);
    PB_EQ_INT(smtp_parse_addrs("a@x.io, b@y.io", to, &nt, 2, why, sizeof(why)), 0);
    char mid1[200], mid2[200];
    smtp_message_id("msg_1.mail", "orders@shop.example", mid1, sizeof(mid1));
    smtp_message_id("msg_1.mail", "orders@shop.example", mid2, sizeof(mid2));
    PB_EQ_STR(mid1, mid2);
    PB_EQ_INT(strlen(mid1), 1 + 32 + 1 + strlen("shop.example") + 1);
    PB_CONTAINS(mid1, "@shop.example>");
    struct smtp_mail m = {.from = from,
                          .to = to,
                          .nto = nt,
                          .subject = "Bestellung über 100 €",
                          .text = "Hallo\nWelt",
                          .html = "<p>Hallo</p>",
                          .idempotency_key = "msg_1.mail",
                          .msg_id = "msg_1",
                          .date_ms = 1700000000000};
    char *out;
    size_t len;
    PB_EQ_INT(smtp_build(&m, &out, &len, why, sizeof(why)), 0);
    PB_CONTAINS(out, "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n");
    PB_CONTAINS(out, "From: \"Shop\" <orders@shop.example>\r\n");
    PB_CONTAINS(out, "To: a@x.io,\r\n b@y.io\r\n");
    PB_CONTAINS(out, "Subject: =?UTF-8?B?");
    PB_CONTAINS(out, "Message-ID: <");
    PB_CONTAINS(out, "X-Patchbay-Message-Id: msg_1\r\n");
    PB_CONTAINS(out, "Content-Type: multipart/alternative; boundary=\"=_pb_");
    PB_CONTAINS(out, "Content-Type: text/plain; charset=UTF-8\r\n"
                     "Content-Transfer-Encoding: quoted-printable\r\n\r\nHallo\r\nWelt\r\n");
    PB_CONTAINS(out, "Content-Type: text/html; charset=UTF-8");
    free(out);
    m.subject = "two\r\nBcc: evil@x.y";
    PB_EQ_INT(smtp_build(&m, &out, &len, why, sizeof(why)), -1);
    PB_CONTAINS(why, "line break");
}

int main(void)
{
    return pb_test_main();
}
