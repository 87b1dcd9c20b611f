/* pb_time.h - clocks and cheap random numbers for the core and plugins. */
#ifndef PB_TIME_H
#define PB_TIME_H

#include <stdint.h>

int64_t pb_now_ms(void);  /* wall clock, unix ms */
int64_t pb_mono_us(void); /* monotonic microseconds */
uint64_t pb_rand64(void); /* fast per-thread PRNG seeded from the OS; not for secrets */
/* A ULID: 48-bit millisecond time + 80 random bits, 26 characters of
 * Crockford base32 into buf (>= 27 bytes): ids that sort by time. */
void pb_ulid(char *buf, int64_t now_ms);

#endif
