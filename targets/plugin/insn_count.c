/* QEMU TCG plugin: exact count of the guest instructions executed, in total and inside the region
 * of interest (ROI) that tvm-mcu's firmware marks with two marker functions.
 *
 * Arguments (all required):
 *   roi_begin=ADDR  entry address of tvmmcu_roi_begin (the Thumb bit is ignored)
 *   roi_end=ADDR    entry address of tvmmcu_roi_end
 *   out=PATH        file that receives `total=<n> roi=<n> roi_calls=<n>` when QEMU exits
 *
 * Every instruction gets an inline 64-bit add when its block is translated, so the count is exact
 * even when a block is left early. The two marker instructions get a callback instead, which takes
 * the snapshot and then counts the instruction itself; the result therefore does not depend on the
 * order in which QEMU runs callbacks and inline ops.
 *
 * roi = instructions executed from the first instruction of tvmmcu_roi_begin (included) up to the
 * first instruction of tvmmcu_roi_end (excluded), for the last begin/end pair; roi_calls counts the
 * pairs.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

static uint64_t total;      /* every executed guest instruction */
static uint64_t roi_start;  /* `total` at the last entry of tvmmcu_roi_begin */
static uint64_t roi;        /* instructions in the last completed ROI */
static uint64_t roi_calls;  /* completed begin/end pairs */
static int in_roi;
static uint64_t begin_addr;
static uint64_t end_addr;
static const char *out_path; /* QEMU keeps argv alive for the plugin's lifetime */

static void on_roi_begin(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    roi_start = total;
    in_roi = 1;
    total += 1;
}

static void on_roi_end(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    if (in_roi) {
        roi = total - roi_start;
        roi_calls += 1;
        in_roi = 0;
    }
    total += 1;
}

static void on_tb_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    const size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; ++i) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        const uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
        if (vaddr == begin_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_roi_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
        } else if (vaddr == end_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_roi_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
        } else {
            qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &total, 1);
        }
    }
}

static void write_counts(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    FILE *f = fopen(out_path, "w");
    if (f == NULL) {
        fprintf(stderr, "insn_count: cannot write %s: %s\n", out_path, strerror(errno));
        return;
    }
    fprintf(f, "total=%" PRIu64 " roi=%" PRIu64 " roi_calls=%" PRIu64 "\n", total, roi, roi_calls);
    fclose(f);
}

/* Parses `text` as a C integer literal (0x... allowed) with nothing after it. */
static int parse_addr(const char *text, uint64_t *value)
{
    char *end = NULL;
    errno = 0;
    const unsigned long long v = strtoull(text, &end, 0);
    if (errno != 0 || end == text || *end != '\0') {
        return -1;
    }
    *value = (uint64_t)v & ~(uint64_t)1; /* Thumb function addresses have bit 0 set */
    return 0;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv);

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    int have_begin = 0;
    int have_end = 0;
    for (int i = 0; i < argc; ++i) {
        const char *arg = argv[i];
        if (strncmp(arg, "roi_begin=", 10) == 0 && parse_addr(arg + 10, &begin_addr) == 0) {
            have_begin = 1;
        } else if (strncmp(arg, "roi_end=", 8) == 0 && parse_addr(arg + 8, &end_addr) == 0) {
            have_end = 1;
        } else if (strncmp(arg, "out=", 4) == 0 && arg[4] != '\0') {
            out_path = arg + 4;
        } else {
            fprintf(stderr, "insn_count: bad argument '%s' (expected roi_begin=ADDR, roi_end=ADDR, out=PATH)\n", arg);
            return 1;
        }
    }
    if (!have_begin || !have_end || out_path == NULL) {
        fprintf(stderr, "insn_count: roi_begin=ADDR, roi_end=ADDR and out=PATH are all required\n");
        return 1;
    }
    if (begin_addr == end_addr) {
        fprintf(stderr, "insn_count: roi_begin and roi_end are the same address\n");
        return 1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_translate);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
