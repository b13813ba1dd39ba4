/*
 * A power cut for one process, as LD_PRELOAD: what a file holds at its last
 * fsync/fdatasync is what survives. At every sync of a regular file under
 * $POWERCUT_DIR the shim copies the file whole to FILE.durable (written to a
 * temporary and renamed, so a kill mid-copy leaves the previous image); a test
 * kills the process and puts the .durable images back. Writes that were never
 * synced are lost, the most pessimistic disk there is. The real sync is not
 * called: in this model only the image counts, and the test stays fast. A file
 * deleted (SQLite deletes the WAL when its last connection closes, after a
 * checkpoint that synced the database) takes its image with it.
 *
 * Used by tests/central.rs (what_the_central_answers_survives_a_power_cut).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void image(int fd) {
    const char *dir = getenv("POWERCUT_DIR");
    struct stat st;
    char link[64], path[4096], tmp[4200], dst[4200], buf[65536];
    ssize_t n, r;
    off_t off = 0;
    int out;
    if (!dir || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return;
    path[n] = 0;
    if (strncmp(path, dir, strlen(dir)) != 0 || strstr(path, ".durable")) return;
    snprintf(dst, sizeof dst, "%s.durable", path);
    snprintf(tmp, sizeof tmp, "%s.durable.tmp", path);
    pthread_mutex_lock(&lock);
    out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out < 0) abort();
    while ((r = pread(fd, buf, sizeof buf, off)) > 0) {
        ssize_t w = 0;
        while (w < r) {
            ssize_t k = write(out, buf + w, r - w);
            if (k <= 0) abort();
            w += k;
        }
        off += r;
    }
    if (r < 0) abort();
    close(out);
    if (rename(tmp, dst) != 0) abort();
    pthread_mutex_unlock(&lock);
}

int fsync(int fd) {
    image(fd);
    return 0;
}

int fdatasync(int fd) {
    image(fd);
    return 0;
}

int unlink(const char *path) {
    static int (*real)(const char *);
    const char *dir = getenv("POWERCUT_DIR");
    char image_path[4200];
    int r;
    if (!real) real = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
    r = real(path);
    if (r == 0 && dir && strncmp(path, dir, strlen(dir)) == 0 && !strstr(path, ".durable")) {
        snprintf(image_path, sizeof image_path, "%s.durable", path);
        pthread_mutex_lock(&lock);
        real(image_path);
        pthread_mutex_unlock(&lock);
    }
    return r;
}
