/*
 * test_fault.c: devmodel/fault.c: kind names, marker parsing, and the
 * per-(endpoint, body) counting that makes "x<n>" markers fail n times.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "fault.h"

static int find(const char *text, const char *ep, rp_fault_marker_t *m)
{
    return rp_fault_marker_find(text, strlen(text), ep, m);
}

static void test_kinds(void **state)
{
    for (int k = 0; k < RP_FAULT_NKINDS; k++) {
        const char *name = rp_fault_name((rp_fault_kind_t)k);
        assert_int_equal(rp_fault_parse(name, strlen(name)), k);
    }
    assert_int_equal(rp_fault_parse("418", 3), -1);
    assert_int_equal(rp_fault_parse("stal", 4), -1);
}

static void test_markers(void **state)
{
    rp_fault_marker_t m;
    assert_true(find("hi [[fault:chat:429x2]] there", "chat", &m));
    assert_int_equal(m.kind, RP_FAULT_429);
    assert_int_equal(m.times, 2);
    assert_true(find("[[fault:embed:stall]]", "embed", &m));
    assert_int_equal(m.kind, RP_FAULT_STALL);
    assert_int_equal(m.times, 0);
    /* Another endpoint's marker is ignored; the next one counts. */
    assert_false(find("[[fault:embed:500x1]] q", "chat", &m));
    assert_true(find("[[fault:embed:500x1]][[fault:chat:malformedx3]]", "chat", &m));
    assert_int_equal(m.kind, RP_FAULT_MALFORMED);
    assert_int_equal(m.times, 3);
    assert_true(find("{\"input\":\"[[fault:embed:truncate]]\"}", "embed", &m));
    assert_int_equal(m.kind, RP_FAULT_TRUNCATE);
    /* Malformed markers. */
    assert_false(find("[[fault:chat:999]]", "chat", &m));
    assert_false(find("[[fault:chat:429x]]", "chat", &m));
    assert_false(find("[[fault:chat:429x0]]", "chat", &m));
    assert_false(find("[[fault:chat:429", "chat", &m));
    assert_false(find("[[fault:chatter:429]]", "chat", &m));
    assert_false(find("no marker", "chat", &m));
}

static void test_counting(void **state)
{
    rp_devmodel_faultmem_t *mem = rp_devmodel_faultmem_new();
    assert_non_null(mem);
    rp_fault_marker_t m = {RP_FAULT_429, 2};
    const char *a = "{\"messages\":[\"[[fault:chat:429x2]] a\"]}";
    const char *b = "{\"messages\":[\"[[fault:chat:429x2]] b\"]}";
    assert_true(rp_devmodel_faultmem_hit(mem, "chat", a, strlen(a), &m));
    assert_true(rp_devmodel_faultmem_hit(mem, "chat", b, strlen(b), &m));
    assert_true(rp_devmodel_faultmem_hit(mem, "chat", a, strlen(a), &m));
    assert_false(rp_devmodel_faultmem_hit(mem, "chat", a, strlen(a), &m));
    assert_false(rp_devmodel_faultmem_hit(mem, "chat", a, strlen(a), &m));
    /* Per endpoint: the same body on another endpoint counts separately. */
    assert_true(rp_devmodel_faultmem_hit(mem, "embed", a, strlen(a), &m));
    assert_true(rp_devmodel_faultmem_hit(mem, "chat", b, strlen(b), &m));
    assert_false(rp_devmodel_faultmem_hit(mem, "chat", b, strlen(b), &m));
    /* Many bodies make the table grow without losing counts. */
    char body[64];
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 1000; i++) {
            snprintf(body, sizeof(body), "body %d", i);
            rp_fault_marker_t one = {RP_FAULT_500, 1};
            assert_int_equal(rp_devmodel_faultmem_hit(mem, "embed", body, strlen(body), &one),
                             round == 0);
        }
    /* Without x<n>: every time. */
    rp_fault_marker_t always = {RP_FAULT_503, 0};
    for (int i = 0; i < 5; i++)
        assert_true(rp_devmodel_faultmem_hit(mem, "chat", a, strlen(a), &always));
    rp_devmodel_faultmem_reset(mem);
    assert_true(rp_devmodel_faultmem_hit(mem, "chat", a, strlen(a), &m));
    rp_devmodel_faultmem_free(mem);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kinds),
        cmocka_unit_test(test_markers),
        cmocka_unit_test(test_counting),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
