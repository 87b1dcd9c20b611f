/* pb_nats.c - a small NATS JetStream client for the system tests and the
 * bench (the nats CLI is not packaged): create streams, publish test messages, read what a
 * stream holds and a consumer's state. Every answer is JSON on stdout.
 *
 *   pb_nats URL stream-add NAME SUBJECT [DUPLICATE_WINDOW_SECONDS]
 *   pb_nats URL stream-info NAME
 *        -> {"messages":N,"first_seq":N,"last_seq":N}
 *   pb_nats URL consumer-info STREAM CONSUMER      (exit 3 when there is none)
 *        -> {"num_pending":N,"num_ack_pending":N,"num_redelivered":N,"num_waiting":N,
 *            "delivered_stream_seq":N,"ack_floor_stream_seq":N,"ack_wait_ms":N,
 *            "max_ack_pending":N}
 *   pb_nats URL publish SUBJECT COUNT [--start N] [--body FMT] [--msg-id FMT]
 *                                     [--header NAME:VALUE]...
 *        every %d in FMT is replaced by the message's number (start, start+1...);
 *        the default body is {"n":%d}. Publishes are pipelined (up to 4096 awaiting
 *        their PubAck). -> {"published":N,"duplicates":N,"errors":N,"seconds":S}
 *   pb_nats URL consume STREAM DURABLE COUNT [--batch B] [--idle-ms MS]
 *        reads COUNT messages through the durable pull consumer (made when absent:
 *        explicit acks, from the first message), fetching B (256) at a time and
 *        acknowledging each; stops early after MS (5000) without a message.
 *        -> {"consumed":N,"seconds":S} (first message to last); exit 1 when short
 *   pb_nats URL dump STREAM
 *        one JSON line per message: {"seq":N,"subject":S,"data":S,"headers":{NAME:[V...]}}
 *
 * Single-threaded but for the library's own threads; publishes are
 * asynchronous with a PubAck handler and waited for. Exit 0 on success. */
#include <jansson.h>
#include <nats/nats.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Atomic long acked, dups, errors, handled;

static void ack_cb(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    (void)closure;
    if (pa) {
        atomic_fetch_add(&acked, 1);
        if (pa->Duplicate)
            atomic_fetch_add(&dups, 1);
    } else {
        if (atomic_fetch_add(&errors, 1) < 5)
            fprintf(stderr, "publish failed: %s\n",
                    pae && pae->ErrText ? pae->ErrText : natsStatus_GetText(pae ? pae->Err : 0));
    }
    natsMsg_Destroy(msg);
    atomic_fetch_add(&handled, 1);
}

static void print_json(json_t *o)
{
    char *t = json_dumps(o, JSON_COMPACT);
    puts(t ? t : "null");
    free(t);
    json_decref(o);
}

static int fail(const char *what, natsStatus s, jsErrCode ec)
{
    fprintf(stderr, "%s: %s (%s) js_error=%d\n", what, natsStatus_GetText(s),
            nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "", (int)ec);
    return 1;
}

/* fmt with every %d replaced by n. */
static void fill(char *buf, size_t len, const char *fmt, long n)
{
    size_t o = 0;
    buf[0] = 0;
    for (const char *p = fmt; *p && o + 1 < len;) {
        if (p[0] == '%' && p[1] == 'd') {
            int w = snprintf(buf + o, len - o, "%ld", n);
            if (w < 0 || (size_t)w >= len - o)
                break;
            o += (size_t)w;
            p += 2;
        } else {
            buf[o++] = *p++;
            buf[o] = 0;
        }
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmd_stream_add(jsCtx *js, int argc, char **argv)
{
    if (argc < 2)
        return 2;
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    const char *subjects[1] = {argv[1]};
    sc.Name = argv[0];
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    if (argc > 2)
        sc.Duplicates = atoll(argv[2]) * 1000000000LL;
    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_AddStream(&si, js, &sc, NULL, &ec);
    if (s != NATS_OK)
        return fail("stream-add", s, ec);
    jsStreamInfo_Destroy(si);
    print_json(json_pack("{s:s}", "created", argv[0]));
    return 0;
}

static int cmd_stream_info(jsCtx *js, int argc, char **argv)
{
    if (argc < 1)
        return 2;
    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_GetStreamInfo(&si, js, argv[0], NULL, &ec);
    if (s != NATS_OK)
        return ec == 10059 ? 3 : fail("stream-info", s, ec);
    print_json(json_pack("{s:I, s:I, s:I}", "messages", (json_int_t)si->State.Msgs, "first_seq",
                         (json_int_t)si->State.FirstSeq, "last_seq",
                         (json_int_t)si->State.LastSeq));
    jsStreamInfo_Destroy(si);
    return 0;
}

static int cmd_consumer_info(jsCtx *js, int argc, char **argv)
{
    if (argc < 2)
        return 2;
    jsConsumerInfo *ci = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_GetConsumerInfo(&ci, js, argv[0], argv[1], NULL, &ec);
    if (s != NATS_OK)
        return ec == 10014 || s == NATS_NOT_FOUND ? 3 : fail("consumer-info", s, ec);
    print_json(json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "num_pending", (json_int_t)ci->NumPending,
        "num_ack_pending", (json_int_t)ci->NumAckPending, "num_redelivered",
        (json_int_t)ci->NumRedelivered, "num_waiting", (json_int_t)ci->NumWaiting,
        "delivered_stream_seq", (json_int_t)ci->Delivered.Stream, "ack_floor_stream_seq",
        (json_int_t)ci->AckFloor.Stream, "ack_wait_ms", (json_int_t)(ci->Config->AckWait / 1000000),
        "max_ack_pending", (json_int_t)ci->Config->MaxAckPending));
    jsConsumerInfo_Destroy(ci);
    return 0;
}

static int cmd_publish(jsCtx *js, int argc, char **argv)
{
    if (argc < 2)
        return 2;
    const char *subject = argv[0];
    long count = atol(argv[1]), start = 0;
    const char *body = "{\"n\":%d}", *msgid = NULL;
    const char *hdrs[16];
    int nh = 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--start") == 0)
            start = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--body") == 0)
            body = argv[i + 1];
        else if (strcmp(argv[i], "--msg-id") == 0)
            msgid = argv[i + 1];
        else if (strcmp(argv[i], "--header") == 0 && nh < 16)
            hdrs[nh++] = argv[i + 1];
        else
            return 2;
    }
    double t0 = now_s();
    for (long i = start; i < start + count; i++) {
        char b[4096], id[256];
        natsMsg *m = NULL;
        fill(b, sizeof(b), body, i);
        natsStatus s = natsMsg_Create(&m, subject, NULL, b, (int)strlen(b));
        for (int h = 0; s == NATS_OK && h < nh; h++) {
            char name[128];
            const char *colon = strchr(hdrs[h], ':');
            if (!colon || (size_t)(colon - hdrs[h]) >= sizeof(name))
                return 2;
            memcpy(name, hdrs[h], (size_t)(colon - hdrs[h]));
            name[colon - hdrs[h]] = 0;
            s = natsMsgHeader_Add(m, name, colon + 1);
        }
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 10000;
        if (msgid) {
            fill(id, sizeof(id), msgid, i);
            po.MsgId = id;
        }
        if (s == NATS_OK)
            s = js_PublishMsgAsync(js, &m, &po);
        natsMsg_Destroy(m);
        if (s != NATS_OK)
            return fail("publish", s, 0);
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 60000;
    natsStatus s = js_PublishAsyncComplete(js, &po);
    if (s != NATS_OK)
        return fail("publish complete", s, 0);
    /* The last handler may still be finishing: let it, before the teardown. */
    for (int i = 0; i < 10000 && atomic_load(&handled) < count; i++)
        nats_Sleep(1);
    double dt = now_s() - t0;
    print_json(json_pack("{s:I, s:I, s:I, s:f}", "published", (json_int_t)atomic_load(&acked),
                         "duplicates", (json_int_t)atomic_load(&dups), "errors",
                         (json_int_t)atomic_load(&errors), "seconds", dt));
    return atomic_load(&errors) ? 1 : 0;
}

/* A durable pull consumer (created when absent: explicit acks, from the
 * stream's first message) read in batches, each message acknowledged as it
 * is taken, until count messages or idle_ms without one. */
static int cmd_consume(jsCtx *js, int argc, char **argv)
{
    if (argc < 3)
        return 2;
    const char *stream = argv[0], *durable = argv[1];
    long want = atol(argv[2]), batch = 256, idle_ms = 5000;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--batch") == 0)
            batch = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--idle-ms") == 0)
            idle_ms = atol(argv[i + 1]);
        else
            return 2;
    }
    if (batch < 1 || batch > 10000 || want < 0)
        return 2;
    jsConsumerInfo *ci = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_GetConsumerInfo(&ci, js, stream, durable, NULL, &ec);
    if (s != NATS_OK) {
        jsConsumerConfig cc;
        jsConsumerConfig_Init(&cc);
        cc.Durable = durable;
        cc.AckPolicy = js_AckExplicit;
        cc.DeliverPolicy = js_DeliverAll;
        cc.MaxAckPending = 65536;
        s = js_AddConsumer(&ci, js, stream, &cc, NULL, &ec);
        if (s != NATS_OK)
            return fail("consumer add", s, ec);
    }
    jsConsumerInfo_Destroy(ci);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Consumer = durable;
    natsSubscription *sub = NULL;
    s = js_PullSubscribe(&sub, js, NULL, durable, NULL, &so, &ec);
    if (s != NATS_OK)
        return fail("pull subscribe", s, ec);
    long got = 0;
    double t0 = 0, t1 = 0;
    while (got < want) {
        natsMsgList list = {0};
        long n = want - got < batch ? want - got : batch;
        s = natsSubscription_Fetch(&list, sub, (int)n, idle_ms, &ec);
        if (s == NATS_TIMEOUT)
            break;
        if (s != NATS_OK) {
            natsSubscription_Destroy(sub);
            return fail("fetch", s, ec);
        }
        if (!got && list.Count > 0)
            t0 = now_s();
        for (int i = 0; i < list.Count; i++)
            natsMsg_Ack(list.Msgs[i], NULL);
        got += list.Count;
        t1 = now_s();
        natsMsgList_Destroy(&list);
    }
    natsSubscription_Destroy(sub);
    double dt = t1 - t0;
    print_json(json_pack("{s:I, s:f}", "consumed", (json_int_t)got, "seconds", dt));
    return got == want ? 0 : 1;
}

static int cmd_dump(jsCtx *js, int argc, char **argv)
{
    if (argc < 1)
        return 2;
    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_GetStreamInfo(&si, js, argv[0], NULL, &ec);
    if (s != NATS_OK)
        return fail("stream-info", s, ec);
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    for (uint64_t seq = first; seq && seq <= last; seq++) {
        natsMsg *m = NULL;
        s = js_GetMsg(&m, js, argv[0], seq, NULL, &ec);
        if (s != NATS_OK) {
            if (s == NATS_NOT_FOUND)
                continue; /* deleted */
            return fail("get", s, ec);
        }
        json_t *o =
            json_pack("{s:I, s:s, s:s%}", "seq", (json_int_t)seq, "subject", natsMsg_GetSubject(m),
                      "data", natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
        json_t *h = json_object();
        const char **keys = NULL;
        int nk = 0;
        if (natsMsgHeader_Keys(m, &keys, &nk) == NATS_OK) {
            for (int i = 0; i < nk; i++) {
                const char **vals = NULL;
                int nv = 0;
                json_t *a = json_array();
                if (natsMsgHeader_Values(m, keys[i], &vals, &nv) == NATS_OK)
                    for (int j = 0; j < nv; j++)
                        json_array_append_new(a, json_string(vals[j]));
                free((void *)vals);
                json_object_set_new(h, keys[i], a);
            }
            free((void *)keys);
        }
        json_object_set_new(o, "headers", h);
        print_json(o);
        natsMsg_Destroy(m);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(
            stderr,
            "usage: pb_nats URL stream-add|stream-info|consumer-info|publish|consume|dump ...\n");
        return 2;
    }
    natsConnection *nc = NULL;
    natsOptions *o = NULL;
    jsCtx *js = NULL;
    jsOptions jo;
    int rc = 1;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, argv[1]);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, 5000);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, o);
    if (s != NATS_OK) {
        fail("connect", s, 0);
        goto out;
    }
    jsOptions_Init(&jo);
    jo.Wait = 10000;
    jo.PublishAsync.AckHandler = ack_cb;
    jo.PublishAsync.MaxPending = 4096;
    jo.PublishAsync.StallWait = 10000;
    s = natsConnection_JetStream(&js, nc, &jo);
    if (s != NATS_OK) {
        fail("jetstream", s, 0);
        goto out;
    }
    const char *cmd = argv[2];
    int n = argc - 3;
    char **a = argv + 3;
    if (strcmp(cmd, "stream-add") == 0)
        rc = cmd_stream_add(js, n, a);
    else if (strcmp(cmd, "stream-info") == 0)
        rc = cmd_stream_info(js, n, a);
    else if (strcmp(cmd, "consumer-info") == 0)
        rc = cmd_consumer_info(js, n, a);
    else if (strcmp(cmd, "publish") == 0)
        rc = cmd_publish(js, n, a);
    else if (strcmp(cmd, "consume") == 0)
        rc = cmd_consume(js, n, a);
    else if (strcmp(cmd, "dump") == 0)
        rc = cmd_dump(js, n, a);
    else
        rc = 2;
    if (rc == 2)
        fprintf(stderr, "pb_nats: bad arguments for %s\n", cmd);
out:
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(o);
    /* No nats_Close(): it would end the library's threads with a reply still in hand. */
    return rc;
}
