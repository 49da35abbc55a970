/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kcore_read: copy LEN bytes of kernel virtual memory at ADDR into OUTFILE,
 * read through /proc/kcore (an ELF64 core file in the kernel's byte order).
 * Built static per architecture by tools/kernel_oracle/run.py; runs in the
 * guest as root.  Bytes not covered by any PT_LOAD are reported and left 0.
 *
 * usage: kcore_read ADDR LEN OUTFILE    (ADDR and LEN accept 0x prefixes)
 * exit:  0 all bytes read, 1 some bytes missing, 2 usage or open error
 */
#include <elf.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int read_at(int fd, void *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, off + (off_t)done);

		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	Elf64_Ehdr eh;
	Elf64_Phdr *ph;
	unsigned long long addr, len, pos;
	unsigned char *buf;
	int fd, out, missing = 0;

	if (argc != 4) {
		fprintf(stderr, "usage: %s ADDR LEN OUTFILE\n", argv[0]);
		return 2;
	}
	addr = strtoull(argv[1], NULL, 0);
	len = strtoull(argv[2], NULL, 0);
	fd = open("/proc/kcore", O_RDONLY);
	if (fd < 0) {
		perror("/proc/kcore");
		return 2;
	}
	if (read_at(fd, &eh, sizeof(eh), 0) || memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64) {
		fprintf(stderr, "/proc/kcore: not an ELF64 core\n");
		return 2;
	}
	ph = calloc(eh.e_phnum, sizeof(*ph));
	buf = calloc(1, len ? len : 1);
	if (!ph || !buf)
		return 2;
	for (unsigned int i = 0; i < eh.e_phnum; i++)
		if (read_at(fd, &ph[i], sizeof(*ph), (off_t)(eh.e_phoff + (Elf64_Off)i * eh.e_phentsize)))
			return 2;
	for (pos = 0; pos < len;) {
		unsigned long long a = addr + pos, chunk = 0;
		int found = 0;

		for (unsigned int i = 0; i < eh.e_phnum; i++) {
			if (ph[i].p_type != PT_LOAD || a < ph[i].p_vaddr ||
			    a - ph[i].p_vaddr >= ph[i].p_memsz)
				continue;
			chunk = ph[i].p_vaddr + ph[i].p_memsz - a;
			if (chunk > len - pos)
				chunk = len - pos;
			if (read_at(fd, buf + pos, chunk, (off_t)(ph[i].p_offset + (a - ph[i].p_vaddr)))) {
				fprintf(stderr, "kcore_read: read failed at 0x%llx\n", a);
				missing = 1;
			}
			found = 1;
			break;
		}
		if (!found) {
			fprintf(stderr, "kcore_read: 0x%llx not in /proc/kcore\n", a);
			missing = 1;
			chunk = 4096 - (a & 4095);
			if (chunk > len - pos)
				chunk = len - pos;
		}
		pos += chunk;
	}
	out = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (out < 0 || write(out, buf, len) != (ssize_t)len) {
		perror(argv[3]);
		return 2;
	}
	close(out);
	return missing;
}
