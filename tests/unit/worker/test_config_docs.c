/* Tests that docs/CONFIGURATION.md documents every setting of worker/config.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"

static void every_variable_is_documented(void **state)
{
    FILE *f = fopen(RP_SOURCE_DIR "/docs/CONFIGURATION.md", "r");
    assert_non_null(f);
    rp_buf_t b = RP_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        rp_buf_append(&b, chunk, n);
    fclose(f);
    for (size_t i = 0; i < rp_worker_cfg_ndefs; i++) {
        char needle[128];
        snprintf(needle, sizeof(needle), "`%s`", rp_worker_cfg_defs[i].name);
        if (strstr(b.data, needle) == NULL)
            fail_msg("docs/CONFIGURATION.md does not document %s", rp_worker_cfg_defs[i].name);
    }
    rp_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(every_variable_is_documented)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
