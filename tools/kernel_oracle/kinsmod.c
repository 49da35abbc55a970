// SPDX-License-Identifier: GPL-2.0
/* kinsmod FILE: one finit_module(2) call, as kmod's insmod makes it (busybox's
 * insmod retries with init_module(2) after any failure, so the kernel would
 * print a refused module's lines twice).  Exit status: 0, or the errno. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int fd, rc;

	if (argc != 2) {
		fprintf(stderr, "usage: kinsmod FILE\n");
		return 2;
	}
	fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		perror(argv[1]);
		return 2;
	}
	rc = syscall(SYS_finit_module, fd, "", 0);
	if (rc != 0) {
		rc = errno;
		fprintf(stderr, "kinsmod: %s: %s\n", argv[1], strerror(rc));
		return rc;
	}
	return 0;
}
