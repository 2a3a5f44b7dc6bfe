/* ARM semihosting for the tvm-mcu firmware (bkpt 0xAB in Thumb state).
 *
 * QEMU implements these calls with `-semihosting-config enable=on,target=native`. The console calls
 * (SYS_WRITE0) go to the chardev named by `chardev=`; file paths are relative to QEMU's working
 * directory. Every call blocks the guest until the host has done the work.
 */
#ifndef TVMMCU_SEMIHOST_H
#define TVMMCU_SEMIHOST_H

#include <stdint.h>

#define TVMMCU_SYS_OPEN 0x01u
#define TVMMCU_SYS_CLOSE 0x02u
#define TVMMCU_SYS_WRITE0 0x04u
#define TVMMCU_SYS_WRITE 0x05u
#define TVMMCU_SYS_READ 0x06u
#define TVMMCU_SYS_FLEN 0x0Cu
#define TVMMCU_SYS_EXIT 0x18u
#define TVMMCU_SYS_EXIT_EXTENDED 0x20u

/* Reason code of a normal application exit (ADP_Stopped_ApplicationExit). */
#define TVMMCU_ADP_APPLICATION_EXIT 0x20026u

/* SYS_OPEN modes (ISO C fopen modes, in the order the semihosting spec numbers them). */
#define TVMMCU_SH_MODE_RB 1u
#define TVMMCU_SH_MODE_WB 5u

static inline int32_t tvmmcu_sh_call(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return (int32_t)r0;
}

/* Write a NUL-terminated string to the semihosting console. */
static inline void tvmmcu_sh_puts(const char *s)
{
    (void)tvmmcu_sh_call(TVMMCU_SYS_WRITE0, s);
}

/* Stop the machine; QEMU exits with `code` as its status (SYS_EXIT_EXTENDED keeps all the bits,
 * plain SYS_EXIT on 32-bit Arm only tells 0 from non-zero). */
static inline __attribute__((noreturn)) void tvmmcu_sh_exit(uint32_t code)
{
    const uint32_t block[2] = {TVMMCU_ADP_APPLICATION_EXIT, code};
    (void)tvmmcu_sh_call(TVMMCU_SYS_EXIT_EXTENDED, block);
    /* Only reached if the host lacks the extended call. */
    (void)tvmmcu_sh_call(TVMMCU_SYS_EXIT, (const void *)TVMMCU_ADP_APPLICATION_EXIT);
    for (;;) {
    }
}

/* Open a host file; returns a handle, or -1. `name_len` excludes the terminating NUL. */
static inline int32_t tvmmcu_sh_open(const char *name, uint32_t mode, uint32_t name_len)
{
    const uint32_t block[3] = {(uint32_t)(uintptr_t)name, mode, name_len};
    return tvmmcu_sh_call(TVMMCU_SYS_OPEN, block);
}

static inline int32_t tvmmcu_sh_close(int32_t handle)
{
    const uint32_t block[1] = {(uint32_t)handle};
    return tvmmcu_sh_call(TVMMCU_SYS_CLOSE, block);
}

/* Length of an open host file in bytes, or -1. */
static inline int32_t tvmmcu_sh_flen(int32_t handle)
{
    const uint32_t block[1] = {(uint32_t)handle};
    return tvmmcu_sh_call(TVMMCU_SYS_FLEN, block);
}

/* Returns the number of bytes NOT read (0 when all `n` arrived). */
static inline int32_t tvmmcu_sh_read(int32_t handle, void *buf, uint32_t n)
{
    const uint32_t block[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buf, n};
    return tvmmcu_sh_call(TVMMCU_SYS_READ, block);
}

/* Returns the number of bytes NOT written (0 when all `n` were written). */
static inline int32_t tvmmcu_sh_write(int32_t handle, const void *buf, uint32_t n)
{
    const uint32_t block[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buf, n};
    return tvmmcu_sh_call(TVMMCU_SYS_WRITE, block);
}

#endif /* TVMMCU_SEMIHOST_H */
