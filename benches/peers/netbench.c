/*
 * netbench.c - tiny TCP benchmark tool used by mtls_proxy_bench.sh
 *
 * Copied unchanged from the shared reference scripts (shared/bench/netbench.c);
 * built by benches/peers/mtls_proxy_bench.sh and sidecar_vs_stunnel.sh.
 *
 *   netbench server  HOST PORT
 *       single-threaded epoll echo server (echoes every byte back).
 *       Runs until SIGTERM/SIGINT.
 *   netbench pingpong HOST PORT SIZE ITERS MAX_SECONDS WARMUP
 *       one TCP connection (TCP_NODELAY), WARMUP unrecorded round trips,
 *       then up to ITERS round trips of SIZE bytes (stops after MAX_SECONDS).
 *       Prints one JSON line with round-trip-time percentiles in microseconds.
 *   netbench connrate HOST PORT SIZE THREADS MAX_SECONDS MAX_CONNS
 *       THREADS workers; each loops: connect, send SIZE bytes, read SIZE bytes
 *       back, close. Stops after MAX_SECONDS or MAX_CONNS connections total.
 *       Prints one JSON line: connections/s and per-connection time
 *       percentiles (connect+exchange, microseconds).
 *
 * Only ever connects to the HOST given (scripts pass 127.0.0.1).
 * Build: gcc -O2 -pthread -o netbench netbench.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(uint64_t *v, size_t n, double p) {
    if (n == 0) return 0;
    size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    if (i >= n) i = n - 1;
    return (double)v[i] / 1000.0; /* ns -> us */
}

static void set_addr(struct sockaddr_in *sa, const char *host, int port) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", host);
        exit(2);
    }
}

static int read_full(int fd, char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const char *buf, size_t n) {
    size_t put = 0;
    while (put < n) {
        ssize_t r = write(fd, buf + put, n - put);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        put += (size_t)r;
    }
    return 0;
}

/* ---------------- server ---------------- */
static volatile sig_atomic_t stop_flag = 0;
static void on_sig(int s) { (void)s; stop_flag = 1; }

static int run_server(const char *host, int port) {
    signal(SIGTERM, on_sig);
    signal(SIGINT, on_sig);
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa;
    set_addr(&sa, host, port);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("bind"); return 1; }
    if (listen(ls, 4096) < 0) { perror("listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[256];
    static char buf[65536];
    while (!stop_flag) {
        int n = epoll_wait(ep, evs, 256, 200);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            for (;;) {
                ssize_t r = read(fd, buf, sizeof buf);
                if (r > 0) {
                    /* echo back; for the small messages used here a write never
                       blocks, for safety fall back to a blocking write loop */
                    size_t off = 0;
                    while (off < (size_t)r) {
                        ssize_t w = write(fd, buf + off, (size_t)r - off);
                        if (w > 0) { off += (size_t)w; continue; }
                        if (w < 0 && (errno == EAGAIN || errno == EINTR)) { usleep(50); continue; }
                        break;
                    }
                    if (off < (size_t)r) { close(fd); break; }
                    continue;
                }
                if (r < 0 && errno == EAGAIN) break;
                if (r < 0 && errno == EINTR) continue;
                close(fd); /* EOF or error; close removes it from epoll */
                break;
            }
        }
    }
    close(ls);
    return 0;
}

/* ---------------- pingpong ---------------- */
static int run_pingpong(const char *host, int port, int size, long iters, double max_s, long warmup) {
    struct sockaddr_in sa;
    set_addr(&sa, host, port);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 1; }
    char *out = malloc((size_t)size), *in = malloc((size_t)size);
    memset(out, 'p', (size_t)size);
    for (long i = 0; i < warmup; i++) {
        if (write_full(fd, out, (size_t)size) || read_full(fd, in, (size_t)size)) { fprintf(stderr, "io error in warmup\n"); return 1; }
    }
    uint64_t *lat = malloc(sizeof(uint64_t) * (size_t)iters);
    uint64_t start = now_ns(), deadline = start + (uint64_t)(max_s * 1e9);
    long n = 0;
    for (; n < iters; n++) {
        uint64_t t0 = now_ns();
        if (t0 > deadline) break;
        if (write_full(fd, out, (size_t)size) || read_full(fd, in, (size_t)size)) { fprintf(stderr, "io error\n"); return 1; }
        lat[n] = now_ns() - t0;
    }
    double el = (double)(now_ns() - start) / 1e9;
    close(fd);
    double sum = 0;
    for (long i = 0; i < n; i++) sum += (double)lat[i];
    qsort(lat, (size_t)n, sizeof(uint64_t), cmp_u64);
    printf("{\"test\":\"pingpong\",\"size\":%d,\"count\":%ld,\"elapsed_s\":%.3f,\"rtt_us_mean\":%.2f,"
           "\"rtt_us_p50\":%.2f,\"rtt_us_p90\":%.2f,\"rtt_us_p99\":%.2f,\"rtt_us_p999\":%.2f,\"rtt_us_max\":%.2f}\n",
           size, n, el, n ? sum / (double)n / 1000.0 : 0, pct(lat, (size_t)n, 50), pct(lat, (size_t)n, 90),
           pct(lat, (size_t)n, 99), pct(lat, (size_t)n, 99.9), n ? (double)lat[n - 1] / 1000.0 : 0);
    return 0;
}

/* ---------------- connrate ---------------- */
struct cr_shared {
    struct sockaddr_in sa;
    int size;
    uint64_t deadline;
    long max_conns;
    atomic_long issued;
};
struct cr_thread {
    struct cr_shared *sh;
    uint64_t *lat;
    long cap, n, errors;
    pthread_t th;
};

static void *cr_worker(void *arg) {
    struct cr_thread *t = arg;
    struct cr_shared *sh = t->sh;
    char *out = malloc((size_t)sh->size), *in = malloc((size_t)sh->size);
    memset(out, 'c', (size_t)sh->size);
    int one = 1;
    for (;;) {
        if (now_ns() > sh->deadline) break;
        long k = atomic_fetch_add(&sh->issued, 1);
        if (k >= sh->max_conns) break;
        uint64_t t0 = now_ns();
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) { t->errors++; continue; }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int ok = connect(fd, (struct sockaddr *)&sh->sa, sizeof sh->sa) == 0 &&
                 write_full(fd, out, (size_t)sh->size) == 0 && read_full(fd, in, (size_t)sh->size) == 0;
        close(fd);
        if (!ok) { t->errors++; if (t->errors > 1000) break; usleep(1000); continue; }
        if (t->n < t->cap) t->lat[t->n++] = now_ns() - t0;
    }
    return NULL;
}

static int run_connrate(const char *host, int port, int size, int threads, double max_s, long max_conns) {
    signal(SIGPIPE, SIG_IGN);
    struct cr_shared sh;
    set_addr(&sh.sa, host, port);
    sh.size = size;
    sh.max_conns = max_conns;
    atomic_init(&sh.issued, 0);
    struct cr_thread *ts = calloc((size_t)threads, sizeof *ts);
    uint64_t start = now_ns();
    sh.deadline = start + (uint64_t)(max_s * 1e9);
    for (int i = 0; i < threads; i++) {
        ts[i].sh = &sh;
        ts[i].cap = max_conns;
        ts[i].lat = malloc(sizeof(uint64_t) * (size_t)max_conns);
        pthread_create(&ts[i].th, NULL, cr_worker, &ts[i]);
    }
    long total = 0, errors = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ts[i].th, NULL);
        total += ts[i].n;
        errors += ts[i].errors;
    }
    double el = (double)(now_ns() - start) / 1e9;
    uint64_t *all = malloc(sizeof(uint64_t) * (size_t)(total ? total : 1));
    long k = 0;
    for (int i = 0; i < threads; i++) {
        memcpy(all + k, ts[i].lat, sizeof(uint64_t) * (size_t)ts[i].n);
        k += ts[i].n;
    }
    qsort(all, (size_t)total, sizeof(uint64_t), cmp_u64);
    printf("{\"test\":\"connrate\",\"size\":%d,\"threads\":%d,\"conns\":%ld,\"errors\":%ld,\"elapsed_s\":%.3f,"
           "\"conns_per_s\":%.1f,\"conn_us_p50\":%.2f,\"conn_us_p90\":%.2f,\"conn_us_p99\":%.2f,\"conn_us_max\":%.2f}\n",
           size, threads, total, errors, el, (double)total / el, pct(all, (size_t)total, 50),
           pct(all, (size_t)total, 90), pct(all, (size_t)total, 99), total ? (double)all[total - 1] / 1000.0 : 0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && !strcmp(argv[1], "server")) return run_server(argv[2], atoi(argv[3]));
    if (argc >= 8 && !strcmp(argv[1], "pingpong"))
        return run_pingpong(argv[2], atoi(argv[3]), atoi(argv[4]), atol(argv[5]), atof(argv[6]), atol(argv[7]));
    if (argc >= 8 && !strcmp(argv[1], "connrate"))
        return run_connrate(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atof(argv[6]), atol(argv[7]));
    fprintf(stderr,
            "usage:\n  %s server HOST PORT\n  %s pingpong HOST PORT SIZE ITERS MAX_SECONDS WARMUP\n"
            "  %s connrate HOST PORT SIZE THREADS MAX_SECONDS MAX_CONNS\n",
            argv[0], argv[0], argv[0]);
    return 2;
}
