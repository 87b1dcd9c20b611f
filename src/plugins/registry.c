/* registry.c - the one table of plugins. Adding a connector means adding its
 * folder under src/plugins/ and one line here. */
#include <string.h>

#include "patchbay/pb_plugin.h"

extern const struct pb_input_plugin pb_in_http_server;
extern const struct pb_input_plugin pb_in_generate;
extern const struct pb_input_plugin pb_in_nats;
extern const struct pb_input_plugin pb_in_redis_streams;
extern const struct pb_input_plugin pb_in_mqtt;
extern const struct pb_input_plugin pb_in_kafka;
extern const struct pb_input_plugin pb_in_amqp;
extern const struct pb_input_plugin pb_in_file;
extern const struct pb_input_plugin pb_in_sftp;
extern const struct pb_input_plugin pb_in_http_poll;
extern const struct pb_input_plugin pb_in_sql;
extern const struct pb_input_plugin pb_in_postgres_cdc;
extern const struct pb_processor_plugin pb_proc_map;
extern const struct pb_processor_plugin pb_proc_filter;
extern const struct pb_processor_plugin pb_proc_switch;
extern const struct pb_processor_plugin pb_proc_split;
extern const struct pb_processor_plugin pb_proc_validate;
extern const struct pb_processor_plugin pb_proc_enrich;
extern const struct pb_processor_plugin pb_proc_dedupe;
extern const struct pb_output_plugin pb_out_http;
extern const struct pb_output_plugin pb_out_webhook;
extern const struct pb_output_plugin pb_out_stdout;
extern const struct pb_output_plugin pb_out_drop;
extern const struct pb_output_plugin pb_out_nats;
extern const struct pb_output_plugin pb_out_redis_streams;
extern const struct pb_output_plugin pb_out_mqtt;
extern const struct pb_output_plugin pb_out_kafka;
extern const struct pb_output_plugin pb_out_amqp;
extern const struct pb_output_plugin pb_out_file;
extern const struct pb_output_plugin pb_out_sftp;
extern const struct pb_output_plugin pb_out_smtp;
extern const struct pb_output_plugin pb_out_sql;

/* clang-format off */
const struct pb_input_plugin *const pb_input_plugins[] = {
    &pb_in_http_server,
    &pb_in_generate,
    &pb_in_nats,
    &pb_in_redis_streams,
    &pb_in_mqtt,
    &pb_in_kafka,
    &pb_in_amqp,
    &pb_in_file,
    &pb_in_sftp,
    &pb_in_http_poll,
    &pb_in_sql,
    &pb_in_postgres_cdc,
    NULL,
};
const struct pb_processor_plugin *const pb_processor_plugins[] = {
    &pb_proc_map,
    &pb_proc_filter,
    &pb_proc_switch,
    &pb_proc_split,
    &pb_proc_validate,
    &pb_proc_enrich,
    &pb_proc_dedupe,
    NULL,
};
const struct pb_output_plugin *const pb_output_plugins[] = {
    &pb_out_http,
    &pb_out_webhook,
    &pb_out_stdout,
    &pb_out_drop,
    &pb_out_nats,
    &pb_out_redis_streams,
    &pb_out_mqtt,
    &pb_out_kafka,
    &pb_out_amqp,
    &pb_out_file,
    &pb_out_sftp,
    &pb_out_smtp,
    &pb_out_sql,
    NULL,
};
/* clang-format on */

const struct pb_input_plugin *pb_registry_input(const char *name)
{
    for (size_t i = 0; pb_input_plugins[i]; i++)
        if (strcmp(pb_input_plugins[i]->name, name) == 0)
            return pb_input_plugins[i];
    return NULL;
}

const struct pb_processor_plugin *pb_registry_processor(const char *name)
{
    for (size_t i = 0; pb_processor_plugins[i]; i++)
        if (strcmp(pb_processor_plugins[i]->name, name) == 0)
            return pb_processor_plugins[i];
    return NULL;
}

const struct pb_output_plugin *pb_registry_output(const char *name)
{
    for (size_t i = 0; pb_output_plugins[i]; i++)
        if (strcmp(pb_output_plugins[i]->name, name) == 0)
            return pb_output_plugins[i];
    return NULL;
}
