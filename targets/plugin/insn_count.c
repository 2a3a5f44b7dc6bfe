/* QEMU TCG plugin: exact count of the guest instructions executed, in total and inside the region
 * of interest (ROI) that tvm-mcu's firmware marks with two marker functions, and per operator step.
 *
 * Arguments:
 *   roi_begin=ADDR  entry address of tvmmcu_roi_begin (the Thumb bit is ignored)
 *   roi_end=ADDR    entry address of tvmmcu_roi_end
 *   out=PATH        file that receives `total=<n> roi=<n> roi_calls=<n>` when QEMU exits, then a line
 *                   `steps=<n0>,<n1>,...` when the step arguments are given
 *   steps=PATH      (optional, with driver=) a file of entry addresses, one per line: the operator
 *                   functions the model's driver calls
 *   driver=LO:HI    (optional, with steps=) the driver function's code, [LO, HI)
 *
 * Steps: entering one of the `steps` functions while no step is open opens one (a call from inside an
 * operator, to a helper or another operator function, stays in the open step); the next instruction
 * executed in the driver closes it. A step's count is everything executed from its function's first
 * instruction to its return into the driver (the helpers, libgcc and libm routines it calls included);
 * the driver's own instructions (argument set-up, status tests, copies it makes) are in no step.
 *
 * Every instruction gets an inline 64-bit add when its block is translated, so the count is exact
 * even when a block is left early. The two marker instructions get a callback instead, which takes
 * the snapshot and then counts the instruction itself; the result therefore does not depend on the
 * order in which QEMU runs callbacks and inline ops.
 *
 * roi = instructions executed from the first instruction of tvmmcu_roi_begin (included) up to the
 * first instruction of tvmmcu_roi_end (excluded), for the last begin/end pair; roi_calls counts the
 * pairs.
 *
 * Classes: every inline-counted instruction also adds to the counter of its class (from its mnemonic as
 * QEMU disassembles it: see classify), and an LDM/STM/PUSH/POP adds its register count to multi_regs;
 * the ROI's class counts are written as `classes=<n0>,<n1>,...` in CLASS_NAMES' order, for the cycle
 * estimate (tvm_mcu.targets.cycles). Instructions counted by callback (markers, the driver, step
 * entries) are in no class.
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

#define MAX_STEP_ENTRIES 4096
#define MAX_STEPS 65536
static uint64_t step_entries[MAX_STEP_ENTRIES]; /* sorted */
static size_t n_step_entries;
static uint64_t driver_lo;
static uint64_t driver_hi;
static int have_driver;
static uint64_t steps[MAX_STEPS]; /* counts of the steps of the current (then last) ROI */
static size_t n_steps;
static int step_overflow;
static int step_open;
static uint64_t step_start;

enum {
    C_ALU, C_MUL, C_MLA, C_DIV, C_LOAD, C_STORE, C_MULTI, C_MULTI_REGS, C_BRANCH, C_FPU, C_FMAC, C_FDIV,
    C_FMEM, N_CLASSES
};
static const char *const CLASS_NAMES[N_CLASSES] = {"alu", "mul", "mla", "div", "load", "store", "multi",
                                                   "multi_regs", "branch", "fpu", "fmac", "fdiv", "fmem"};
static uint64_t classes[N_CLASSES];
static uint64_t classes_start[N_CLASSES];
static uint64_t classes_roi[N_CLASSES];

static int starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The class of an instruction from its disassembly ("ldr r3, [r0, #4]", "smlad r4, r5, r6, r4", ...);
 * *regs: the registers an LDM/STM/PUSH/POP moves. */
static int classify(const char *text, uint64_t *regs)
{
    char m[16];
    size_t n = 0;
    while (text[n] != '\0' && text[n] != ' ' && text[n] != '\t' && n + 1 < sizeof m) {
        m[n] = text[n];
        n += 1;
    }
    m[n] = '\0';
    *regs = 0;
    if (m[0] == 'v') {
        if (starts(m, "vdiv") || starts(m, "vsqrt")) {
            return C_FDIV;
        }
        if (starts(m, "vldr") || starts(m, "vstr") || starts(m, "vpush") || starts(m, "vpop") ||
            starts(m, "vldm") || starts(m, "vstm")) {
            return C_FMEM;
        }
        if (starts(m, "vmla") || starts(m, "vmls") || starts(m, "vfma") || starts(m, "vfms") ||
            starts(m, "vnmla") || starts(m, "vnmls") || starts(m, "vfnma") || starts(m, "vfnms")) {
            return C_FMAC;
        }
        return C_FPU;
    }
    if (starts(m, "ldm") || starts(m, "stm") || starts(m, "push") || starts(m, "pop")) {
        const char *open = strchr(text, '{');
        uint64_t count = open != NULL ? 1 : 0;
        for (const char *c = open; c != NULL && *c != '\0' && *c != '}'; ++c) {
            count += *c == ',';
        }
        *regs = count;
        return C_MULTI;
    }
    if (starts(m, "ldr") || starts(m, "ldaex") || starts(m, "lda")) {
        return C_LOAD;
    }
    if (starts(m, "str") || starts(m, "stl")) {
        return C_STORE;
    }
    if (starts(m, "sdiv") || starts(m, "udiv")) {
        return C_DIV;
    }
    if (starts(m, "mla") || starts(m, "mls")) {
        return C_MLA;
    }
    if (starts(m, "mul") || starts(m, "smul") || starts(m, "umul") || starts(m, "smla") || starts(m, "umla") ||
        starts(m, "smlsd") || starts(m, "smus") || starts(m, "smua") || starts(m, "smmul") ||
        starts(m, "smmla") || starts(m, "smmls") || starts(m, "umaal") || starts(m, "smlal")) {
        return C_MUL;
    }
    if ((m[0] == 'b' && !starts(m, "bic") && !starts(m, "bfi") && !starts(m, "bfc") && !starts(m, "bkpt")) ||
        starts(m, "cbz") || starts(m, "cbnz") || starts(m, "tbb") || starts(m, "tbh")) {
        return C_BRANCH;
    }
    return C_ALU;
}

static void on_roi_begin(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    roi_start = total;
    memcpy(classes_start, classes, sizeof classes);
    in_roi = 1;
    n_steps = 0;
    step_open = 0;
    step_overflow = 0;
    total += 1;
}

static void close_step(void)
{
    if (step_open) {
        if (n_steps < MAX_STEPS) {
            steps[n_steps++] = total - step_start;
        } else {
            step_overflow = 1;
        }
        step_open = 0;
    }
}

static void on_step_entry(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    if (in_roi && !step_open) {
        step_open = 1;
        step_start = total;
    }
    total += 1;
}

static void on_driver(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    close_step();
    total += 1;
}

static void on_roi_end(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    if (in_roi) {
        close_step();
        roi = total - roi_start;
        for (int c = 0; c < N_CLASSES; ++c) {
            classes_roi[c] = classes[c] - classes_start[c];
        }
        roi_calls += 1;
        in_roi = 0;
    }
    total += 1;
}

static int is_step_entry(uint64_t vaddr)
{
    size_t lo = 0;
    size_t hi = n_step_entries;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (step_entries[mid] < vaddr) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < n_step_entries && step_entries[lo] == vaddr;
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
        } else if (is_step_entry(vaddr)) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_step_entry, QEMU_PLUGIN_CB_NO_REGS, NULL);
        } else if (have_driver && vaddr >= driver_lo && vaddr < driver_hi) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_driver, QEMU_PLUGIN_CB_NO_REGS, NULL);
        } else {
            qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &total, 1);
            char *text = qemu_plugin_insn_disas(insn);
            uint64_t regs = 0;
            const int c = text != NULL ? classify(text, &regs) : C_ALU;
            free(text);
            qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &classes[c], 1);
            if (regs != 0) {
                qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64,
                                                           &classes[C_MULTI_REGS], regs);
            }
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
    fprintf(f, "classes=");
    for (int c = 0; c < N_CLASSES; ++c) {
        fprintf(f, "%s%s:%" PRIu64, c ? "," : "", CLASS_NAMES[c], classes_roi[c]);
    }
    fprintf(f, "\n");
    if (have_driver) {
        fprintf(f, step_overflow ? "steps=overflow" : "steps=");
        for (size_t i = 0; i < n_steps && !step_overflow; ++i) {
            fprintf(f, "%s%" PRIu64, i ? "," : "", steps[i]);
        }
        fprintf(f, "\n");
    }
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

static int compare_u64(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a;
    const uint64_t y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Reads the step entry addresses of `path`, one C integer literal per line. */
static int read_step_entries(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "insn_count: cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[64];
    while (fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '\0') {
            continue;
        }
        if (n_step_entries == MAX_STEP_ENTRIES || parse_addr(line, &step_entries[n_step_entries]) != 0) {
            fprintf(stderr, "insn_count: %s: bad or too many addresses at '%s'\n", path, line);
            fclose(f);
            return -1;
        }
        n_step_entries += 1;
    }
    fclose(f);
    qsort(step_entries, n_step_entries, sizeof step_entries[0], compare_u64);
    return 0;
}

/* Parses `LO:HI` (C integer literals) into the driver range. */
static int parse_range(const char *text)
{
    char lo[32];
    const char *colon = strchr(text, ':');
    if (colon == NULL || (size_t)(colon - text) >= sizeof lo) {
        return -1;
    }
    memcpy(lo, text, (size_t)(colon - text));
    lo[colon - text] = '\0';
    if (parse_addr(lo, &driver_lo) != 0 || parse_addr(colon + 1, &driver_hi) != 0 || driver_lo >= driver_hi) {
        return -1;
    }
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
        } else if (strncmp(arg, "steps=", 6) == 0 && arg[6] != '\0') {
            if (read_step_entries(arg + 6) != 0) {
                return 1;
            }
        } else if (strncmp(arg, "driver=", 7) == 0 && parse_range(arg + 7) == 0) {
            have_driver = 1;
        } else {
            fprintf(stderr,
                    "insn_count: bad argument '%s' (expected roi_begin=ADDR, roi_end=ADDR, out=PATH, "
                    "steps=PATH, driver=LO:HI)\n",
                    arg);
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
