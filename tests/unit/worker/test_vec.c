/* Tests worker/vec.c: float formatting precision, pgvector/real[] text, base64 decoding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vec.h"

static void fmt(float v, const char *want)
{
    char buf[32];
    size_t n = rp_vec_format_float(buf, v);
    buf[n] = '\0';
    if (strcmp(buf, want) != 0)
        fail_msg("%.9g formatted as '%s', want '%s'", (double)v, buf, want);
}

static void formats_exact_cases(void **state)
{
    fmt(0.0f, "0");
    fmt(1.0f, "1");
    fmt(-1.0f, "-1");
    fmt(0.5f, "0.5");
    fmt(0.0123456789f, "0.01234568");
    fmt(-0.25f, "-0.25");
    fmt(123.456f, "123.456");
    fmt(1e-7f, "1e-07");
    fmt(3e7f, "3e+07");
    fmt(NAN, "0");
}

static void formatting_round_trips(void **state)
{
    uint32_t s = 99;
    for (int i = 0; i < 200000; i++) {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        float v = ((float)(s % 2000001) - 1000000.0f) / 1000000.0f; /* [-1, 1] */
        if (i % 3 == 0)
            v *= 1000.0f;
        if (i % 7 == 0)
            v /= 10000.0f;
        char buf[32];
        size_t n = rp_vec_format_float(buf, v);
        buf[n] = '\0';
        double back = strtod(buf, NULL);
        double tol = fabs((double)v) * 1e-6 + 1e-12;
        if (fabs(back - (double)v) > tol)
            fail_msg("%.9g -> '%s' -> %.9g", (double)v, buf, back);
    }
}

static void vector_text(void **state)
{
    float v[] = {0.5f, -0.25f, 1.0f};
    size_t len;
    char *s = rp_vec_format(v, 3, RP_VEC_PGVECTOR, &len);
    assert_string_equal(s, "[0.5,-0.25,1]");
    assert_int_equal(len, 13);
    free(s);
    s = rp_vec_format(v, 3, RP_VEC_ARRAY, NULL);
    assert_string_equal(s, "{0.5,-0.25,1}");
    free(s);
    s = rp_vec_format(v, 0, RP_VEC_ARRAY, NULL);
    assert_string_equal(s, "{}");
    free(s);
}

static void base64_decoding(void **state)
{
    /* 1.0f = 00 00 80 3f, -2.0f = 00 00 00 c0 (little endian) */
    float out[4];
    assert_int_equal(rp_vec_from_base64("AACAPwAAAMA=", 12, out, 4), 2);
    assert_true(out[0] == 1.0f && out[1] == -2.0f);
    assert_int_equal(rp_vec_from_base64("AACAPwAAAMA", 11, out, 4), 2);
    assert_int_equal(rp_vec_from_base64("AACAPw==", 8, out, 4), 1);
    assert_int_equal(rp_vec_from_base64("AACAPwAAAMA=", 12, out, 1), -1); /* too many */
    assert_int_equal(rp_vec_from_base64("AACA", 4, out, 4), -1);          /* 3 bytes */
    assert_int_equal(rp_vec_from_base64("AAC!Pw==", 8, out, 4), -1);      /* bad char */
    assert_int_equal(rp_vec_from_base64("AADAfw==", 8, out, 4), -1);      /* NaN */
    assert_int_equal(rp_vec_from_base64("", 0, out, 4), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(formats_exact_cases),
        cmocka_unit_test(formatting_round_trips),
        cmocka_unit_test(vector_text),
        cmocka_unit_test(base64_decoding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
